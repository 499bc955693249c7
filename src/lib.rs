//! lossc: a small declarative language for machine-learning loss functions, and its compiler.
//!
//! The pipeline, one module per stage (see ARCHITECTURE.md):
//! `syntax` (text -> AST) -> `check` (AST -> typed IR) -> `interp` (IR -> numbers);
//! `runtime` binds arrays to a loss (shapes, parameters, reductions) and runs a backend;
//! `cases` runs the reference cases; `cli` is the `lossc` binary.

pub mod diag;
pub mod syntax;
pub mod check;
pub mod ir;
pub mod interp;
pub mod runtime;
pub mod cases;
pub mod cli;
pub mod grad;
