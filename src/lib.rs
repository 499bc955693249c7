//! lossc: a small declarative language for machine-learning loss functions, and its compiler.
//!
//! The pipeline, one module per stage (see ARCHITECTURE.md):
//! `syntax` (text -> AST) -> `check` (AST -> typed IR) -> `interp` (IR -> numbers);
//! `runtime` binds arrays to a loss (shapes, parameters, reductions) and runs a backend;
//! `cases` runs the reference cases; `cli` is the `lossc` binary.

pub mod cases;
pub mod check;
pub mod cli;
pub mod diag;
pub mod grad;
pub mod interp;
pub mod ir;
pub mod jit;
pub mod opt;
pub mod repl;
pub mod runtime;
pub mod schedule;
pub mod syntax;
