//! Code generation: a scheduled program -> one native function, through Cranelift.
//!
//! [`compile`] emits every stage of a [`Schedule`] into one function
//! `extern "C" fn(*const Args) -> i64` that fills the output and the gradients in one call,
//! for extents and parameters given at call time (one kernel serves every size).
//! Reals are f32 or f64 (the call's dtype) in registers and in every buffer; sums accumulate
//! in f64 and are rounded once, as in the interpreter. Every data-dependent index is
//! range-checked in the kernel: a failure returns an error record (what, where, which value)
//! instead of touching memory, and the host turns it into the interpreter's message.
//!
//! `if`/`&&`/`||` are lazy (branches) unless both sides are cheap and safe to evaluate, when
//! they become selects. Reductions are emitted in place as loops, hoisted to the outermost
//! loop level where their indices are bound (see `schedule::Analysis::hoistable`).

mod host;
pub mod math;
mod vector;

use vector::VecWork;

use crate::diag::{Error, ErrorKind, Result};
use crate::interp::is_offset;
use crate::ir::{Bin, Expr, ExprId, Func, IndexId, Program, Red, TensorId, Ty, Un};
use crate::schedule::{
    contribution_hoist_roots, contribution_roots, Analysis, Group, Run, Schedule, Stage, When,
};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    types, AbiParam, Block, BlockArg, FuncRef, InstBuilder, MemFlagsData, Type, Value,
};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};
use std::collections::HashMap;
use std::sync::Mutex;

/// What a kernel receives: buffer base pointers (inputs, then tensors, then the output),
/// the extent of every index, every parameter (reals as f64 bits, ints as i64, bools as 0/1),
/// and four i64 slots for an error record.
#[repr(C)]
pub struct Args {
    pub bufs: *const *mut u8,
    pub ext: *const i64,
    pub params: *const u64,
    pub err: *mut i64,
}

/// Error codes in the record's first slot.
pub const ERR_RANGE: i64 = 1;
pub const ERR_DIV_ZERO: i64 = 2;
pub const ERR_NEG_POW: i64 = 3;
pub const ERR_EMPTY: i64 = 4;

/// A kernel's failure: code, the failing node, the dimension and the offending value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub code: i64,
    pub node: ExprId,
    pub dim: usize,
    pub value: i64,
}

/// The element type of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    Real,
    Int,
    Bool,
}

impl Elem {
    pub fn of(ty: Ty) -> Elem {
        match ty {
            Ty::Real => Elem::Real,
            Ty::Int => Elem::Int,
            Ty::Bool => Elem::Bool,
        }
    }
    /// Bytes per element for a kernel of the given precision.
    pub fn size(self, f32: bool) -> usize {
        match self {
            Elem::Real if f32 => 4,
            Elem::Real | Elem::Int => 8,
            Elem::Bool => 1,
        }
    }
}

type Entry = unsafe extern "C" fn(*const Args) -> i64;

/// A compiled program: native code plus what it was generated from.
pub struct Kernel {
    /// the parts, called in order (see [`parts`])
    entries: Vec<Entry>,
    module: Mutex<Option<JITModule>>,
    pub f32: bool,
    /// the Cranelift IR of each part as generated (before Cranelift's own optimisation);
    /// printed only on request, as formatting it (and the machine code) took an eighth of
    /// compile time
    funcs: Vec<cranelift_codegen::ir::Function>,
}

impl Kernel {
    /// The Cranelift IR as generated, before Cranelift's own optimisation (one function per
    /// part, in the order they run).
    pub fn clif(&self) -> String {
        let texts: Vec<String> = self.funcs.iter().map(|f| f.display().to_string()).collect();
        texts.join("\n")
    }

    /// The machine code, as text (the IR compiled again, with disassembly).
    pub fn asm(&self) -> Result<String> {
        let isa = jit_isa()?;
        let mut out = String::new();
        for f in &self.funcs {
            let mut ctx = cranelift_codegen::Context::for_function(f.clone());
            ctx.set_disasm(true);
            let code = ctx
                .compile(&*isa, &mut Default::default())
                .map_err(|e| internal(format!("{:?}", e.inner)))?;
            if !out.is_empty() {
                out.push('\n');
            }
            if self.funcs.len() > 1 {
                out.push_str(&format!("; {}\n", f.name));
            }
            out.push_str(code.vcode.as_deref().unwrap_or_default());
        }
        Ok(out)
    }
}

// The module is only touched on drop (behind the mutex); the code it owns is immutable once
// finalized, so the entry point may be called from any thread.
unsafe impl Sync for Kernel {}

impl Drop for Kernel {
    fn drop(&mut self) {
        if let Ok(mut m) = self.module.lock() {
            if let Some(m) = m.take() {
                // SAFETY: the kernel is being dropped, so no call of `entry` is running or
                // can start; nothing else points into the module's memory.
                unsafe { m.free_memory() };
            }
        }
    }
}

impl Kernel {
    /// Runs the kernel on raw buffers.
    ///
    /// # Safety
    /// `bufs` holds one pointer per input, tensor and the output, in that order, each valid
    /// for the number of elements its index space has under `ext` (element type per
    /// [`Elem`], reals in the kernel's precision); `ext` has one entry per index, `params`
    /// one per parameter.
    pub unsafe fn run(
        &self,
        bufs: &[*mut u8],
        ext: &[i64],
        params: &[u64],
    ) -> std::result::Result<(), Fault> {
        let mut err = [0i64; 4];
        let args = Args {
            bufs: bufs.as_ptr(),
            ext: ext.as_ptr(),
            params: params.as_ptr(),
            err: err.as_mut_ptr(),
        };
        for entry in &self.entries {
            let rc = unsafe { entry(&args) };
            if rc != 0 {
                return Err(Fault {
                    code: err[0],
                    node: ExprId(err[1] as u32),
                    dim: err[2] as usize,
                    value: err[3],
                });
            }
        }
        Ok(())
    }
}

/// The element type of every buffer slot of a program: inputs, tensors, output.
pub fn slots(p: &Program) -> Vec<Elem> {
    let mut v: Vec<Elem> = p.inputs.iter().map(|i| Elem::of(i.ty)).collect();
    v.extend(p.tensors.iter().map(|t| Elem::of(t.ty)));
    v.push(Elem::of(p.output_ty()));
    v
}

/// Cache-key tags of a logsumexp's parts (scalar and vector apart): the sum, whether the
/// maximum is finite, then the exponentials (see [`Gen::remember_lse_parts`]), then the sum's
/// reciprocal (`base + 2 + LSE_PARTS`, see [`Gen::lse_share`]).
const LSE_SCALAR: u8 = 32;
const LSE_VECTOR: u8 = 128;
/// The most exponentials kept (tags `base + 2 ..`).
const LSE_PARTS: usize = 16;

pub(crate) fn internal(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Check, format!("internal (jit): {}", msg.into()))
}

fn jit_module() -> Result<JITModule> {
    let mut jb = JITBuilder::with_isa(jit_isa()?, default_libcall_names());
    for (name, ptr) in host::symbols() {
        jb.symbol(name, ptr);
    }
    Ok(JITModule::new(jb))
}

/// The host's instruction set, with the settings kernels are compiled with.
fn jit_isa() -> Result<cranelift_codegen::isa::OwnedTargetIsa> {
    let mut flags = settings::builder();
    let set = |f: &mut settings::Builder, k: &str, v: &str| {
        f.set(k, v)
            .map_err(|e| internal(format!("setting {k}: {e}")))
    };
    set(&mut flags, "opt_level", "speed")?;
    // Cranelift's IR verifier took an eighth of compile time: on in debug builds (the fuzz
    // targets), and wherever LOSSC_VERIFY is set (CI sets it for the tests).
    let verify = cfg!(debug_assertions)
        || std::env::var("LOSSC_VERIFY").is_ok_and(|v| !v.is_empty() && v != "0");
    set(
        &mut flags,
        "enable_verifier",
        if verify { "true" } else { "false" },
    )?;
    set(&mut flags, "use_colocated_libcalls", "false")?;
    set(&mut flags, "is_pic", "false")?;
    if let Ok(extra) = std::env::var("LOSSC_CL_FLAGS") {
        for kv in extra.split(',') {
            if let Some((k, v)) = kv.split_once('=') {
                set(&mut flags, k, v)?;
            }
        }
    }
    cranelift_native::builder()
        .map_err(|e| internal(format!("host machine not supported: {e}")))?
        .finish(settings::Flags::new(flags))
        .map_err(|e| internal(format!("isa: {e}")))
}

/// Compiles a scheduled program for one precision.
pub fn compile(p: &Program, s: &Schedule, f32: bool) -> Result<Kernel> {
    if std::env::var_os("LOSSC_DEBUG_SCHED").is_some() {
        eprintln!("{}", crate::ir::print_program(p));
        for (k, t) in p.tensors.iter().enumerate() {
            if t.accumulated {
                let t = Some(crate::ir::TensorId(k as u32));
                eprintln!("{}", crate::ir::to_source(p, &p.name, t, ""));
            }
        }
        for st in &s.stages {
            eprintln!("{st:?}");
        }
        eprintln!("functions (stage ranges): {:?}", parts(p, &s.stages));
    }
    let mut module = jit_module()?;
    let ptr = module.target_config().pointer_type();
    let frontend = module.target_config();
    let mut fctx = FunctionBuilderContext::new();
    let split = parts(p, &s.stages);
    // (one analysis for all the parts: it is pool-sized)
    let an = Analysis::new(p);
    // The parts' IR, one function each (declaring them needs the module)...
    let mut ctxs: Vec<(FuncId, cranelift_codegen::Context)> = Vec::new();
    for (k, range) in split.iter().enumerate() {
        let mut ctx = module.make_context();
        ctx.func.signature.params.push(AbiParam::new(ptr));
        ctx.func.signature.returns.push(AbiParam::new(types::I64));
        let name = if split.len() == 1 {
            p.name.clone()
        } else {
            format!("{}_{}", p.name, k)
        };
        let id: FuncId = module
            .declare_function(&name, Linkage::Local, &ctx.func.signature)
            .map_err(|e| internal(e.to_string()))?;
        ctx.func.name = cranelift_codegen::ir::UserFuncName::testcase(&name);
        {
            let b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
            let mut g = Gen::new(p, &an, b, &mut module, f32)?;
            g.body(&s.stages[range.clone()])?;
            g.b.seal_all_blocks();
            g.b.finalize(frontend);
        }
        ctxs.push((id, ctx));
    }
    let funcs: Vec<cranelift_codegen::ir::Function> =
        ctxs.iter().map(|(_, c)| c.func.clone()).collect();
    // ...compiled to machine code on up to as many threads as there are cores...
    compile_all(module.isa(), &mut ctxs).inspect_err(|_| {
        if std::env::var_os("LOSSC_DEBUG_SCHED").is_some() {
            for f in &funcs {
                eprintln!("{}", f.display());
            }
        }
    })?;
    // ...and placed in the module.
    let isa = module.isa();
    let min_align = (isa.function_alignment().minimum as u64).max(isa.symbol_alignment());
    let mut defined: Vec<(FuncId, Option<Vec<u8>>)> = Vec::new();
    for (id, ctx) in &ctxs {
        let code = ctx
            .compiled_code()
            .ok_or_else(|| internal("a part was not compiled"))?;
        let align = (code.buffer.alignment as u64).max(min_align);
        let relocs: Vec<cranelift_module::ModuleReloc> = code
            .buffer
            .relocs()
            .iter()
            .map(|r| cranelift_module::ModuleReloc::from_mach_reloc(r, &ctx.func, *id))
            .collect();
        let bytes = code.code_buffer().to_vec();
        module
            .define_function_bytes(*id, align, &bytes, &relocs)
            .map_err(|e| internal(format!("{e:?}")))?;
        defined.push((*id, std::env::var_os("LOSSC_DEBUG_CODE").map(|_| bytes)));
    }
    module
        .finalize_definitions()
        .map_err(|e| internal(e.to_string()))?;
    let mut entries = Vec::new();
    for (k, (id, bytes)) in defined.into_iter().enumerate() {
        let code = module.get_finalized_function(id);
        if let (Some(bytes), Some(dir)) = (bytes, std::env::var_os("LOSSC_DEBUG_CODE")) {
            // (profiling aid: the machine code and its load address, for objdump and perf)
            let path = std::path::Path::new(&dir)
                .join(format!("{}-{}-{:x}.bin", p.name, k, code as usize));
            let _ = std::fs::write(path, bytes);
        }
        // SAFETY: `code` is the finalized function just defined with the signature
        // `fn(*const Args) -> i64` (one pointer parameter, one i64 result, system call conv).
        entries.push(unsafe { std::mem::transmute::<*const u8, Entry>(code) });
    }
    Ok(Kernel {
        entries,
        module: Mutex::new(Some(module)),
        f32,
        funcs,
    })
}

/// Stages emitted per Cranelift function: consecutive stages, cut where the part so far is big
/// (more than [`PART_NODES`] nodes evaluated) and no reduction is evaluated on both sides of
/// the cut (a reduction computed once is reused by the stages after it through the function's
/// value cache; an output's sums carried by a pass stay with the output). Register allocation
/// costs more than linearly in a function's size, so one big kernel (CTC's: two recurrences
/// in vector and scalar form) compiles faster as several.
fn parts(p: &Program, stages: &[Stage]) -> Vec<std::ops::Range<usize>> {
    // Sparse: what each stage reaches as a list, and for each reduction the last stage that
    // reaches it, so that time and memory grow with what the stages reach, not with
    // stages x pool (30,000 small definitions took 9.7 GB here).
    let roots: Vec<Vec<ExprId>> = stages.iter().map(stage_roots).collect();
    let reach = reach_lists(p, &roots);
    let mut last: HashMap<ExprId, usize> = HashMap::new();
    for (k, r) in reach.iter().enumerate() {
        for e in r {
            if matches!(p.pool.get(*e), Expr::Reduce(..)) {
                last.insert(*e, k);
            }
        }
    }
    let mut out = Vec::new();
    // (`reused_until`: the last stage reaching a reduction the part so far reaches; the part
    // may end before stage k only if no stage from k on needs one of them)
    let (mut start, mut total, mut reused_until) = (0, 0, 0);
    for (k, r) in reach.iter().enumerate() {
        let n = r.len();
        if k > start && total + n > PART_NODES && reused_until < k {
            out.push(start..k);
            start = k;
            total = 0;
        }
        total += n;
        for e in r {
            if let Some(l) = last.get(e) {
                reused_until = reused_until.max(*l);
            }
        }
    }
    out.push(start..stages.len());
    out
}

/// The nodes `roots` reach, in pool order (children before parents): time and memory
/// proportional to what they reach, not to the pool.
pub(crate) fn reach_sparse(p: &Program, roots: &[ExprId]) -> Vec<ExprId> {
    let mut seen = std::collections::HashSet::new();
    let mut stack = roots.to_vec();
    let mut out = Vec::new();
    while let Some(e) = stack.pop() {
        if seen.insert(e) {
            out.push(e);
            p.pool.get(e).for_each_child(|c| stack.push(c));
        }
    }
    out.sort();
    out
}

/// The nodes each list of roots reaches (each list's nodes once, in no particular order):
/// time and memory proportional to the total reached, plus one pool-sized stamp array.
fn reach_lists(p: &Program, lists: &[Vec<ExprId>]) -> Vec<Vec<ExprId>> {
    let mut stamp = vec![u32::MAX; p.pool.len()];
    let mut stack = Vec::new();
    lists
        .iter()
        .enumerate()
        .map(|(k, roots)| {
            let mut out = Vec::new();
            stack.extend_from_slice(roots);
            while let Some(e) = stack.pop() {
                if std::mem::replace(&mut stamp[e.ix()], k as u32) == k as u32 {
                    continue;
                }
                out.push(e);
                p.pool.get(e).for_each_child(|c| stack.push(c));
            }
            out
        })
        .collect()
}

/// See [`parts`].
const PART_NODES: usize = 60;

/// Compiles each function (Cranelift's optimisation, register allocation, emission), several
/// at a time when the machine has the cores and the work is worth a thread: the biggest first,
/// each worker taking the next. The code does not depend on which thread compiled it.
fn compile_all(
    isa: &dyn cranelift_codegen::isa::TargetIsa,
    ctxs: &mut [(FuncId, cranelift_codegen::Context)],
) -> Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let compile = |ctx: &mut cranelift_codegen::Context| -> Result<()> {
        let t0 = std::time::Instant::now();
        // A panic in Cranelift (a lowering it has no rule for: a bool where a float belongs)
        // is an internal error of this call, not the end of the process (the threads below
        // turn theirs into one too).
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ctx.compile(isa, &mut Default::default())
                .map(|_| ())
                .map_err(|e| internal(format!("{:?}", e.inner)))
        }))
        .unwrap_or_else(|_| {
            Err(internal(format!(
                "Cranelift panicked compiling {}",
                ctx.func.name
            )))
        });
        if let Some(dir) = std::env::var_os("LOSSC_DEBUG_OPT") {
            // the optimized CLIF, one file per part
            let path = std::path::Path::new(&dir).join(format!("{}.clif", ctx.func.name));
            let _ = std::fs::write(path, ctx.func.display().to_string());
        }
        if std::env::var_os("LOSSC_DEBUG_SCHED").is_some() {
            eprintln!(
                "part {} insts {}: {:.2} ms",
                ctx.func.name,
                ctx.func.dfg.num_insts(),
                t0.elapsed().as_secs_f64() * 1e3
            );
        }
        r
    };
    let size = |c: &cranelift_codegen::Context| c.func.dfg.num_insts();
    let total: usize = ctxs.iter().map(|(_, c)| size(c)).sum();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(ctxs.len());
    if threads < 2 || total < PARALLEL_INSTS {
        return ctxs.iter_mut().try_for_each(|(_, c)| compile(c));
    }
    let mut work: Vec<&mut cranelift_codegen::Context> = ctxs.iter_mut().map(|(_, c)| c).collect();
    work.sort_by_key(|c| std::cmp::Reverse(size(c)));
    let work: Vec<Mutex<&mut cranelift_codegen::Context>> =
        work.into_iter().map(Mutex::new).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|sc| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                sc.spawn(|| -> Result<()> {
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(m) = work.get(k) else {
                            return Ok(());
                        };
                        let mut c = m.lock().map_err(|_| internal("compile lock"))?;
                        compile(&mut c)?;
                    }
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .map_err(|_| internal("a compile thread panicked"))?
        })
    })
}

/// Instructions (all parts together) below which a kernel compiles on the calling thread.
const PARALLEL_INSTS: usize = 3000;

/// Distinct 16-byte cells of the anchor slot (see `Gen::pin`).
const ANCHORS: usize = 64;

/// At most this many copies of a vector loop, one per values of the conditions the same for
/// all its cells (see [`Gen::unswitched`]).
const UNSWITCH_COPIES: usize = 8;

/// Per-accumulator state of a reduction carried by a loop.
pub(crate) struct Carried {
    node: ExprId,
    red: Red,
    body: ExprId,
    var: Variable,
    /// accumulate e^(body - shift) instead of the body (logsumexp's second pass)
    shift: Option<Value>,
}

/// A scatter's innermost space index, the runs outside group loops (candidates to hold in a
/// register along it), all of its runs and its groups' carried reductions.
struct Hold {
    ix: IndexId,
    runs: Vec<Run>,
    all: Vec<Run>,
    carried: Vec<ExprId>,
}

struct Gen<'a, 'b> {
    p: &'a Program,
    an: &'a Analysis<'a>,
    b: FunctionBuilder<'b>,
    module: &'b mut JITModule,
    f32: bool,
    rt: Type,
    /// each slot's base pointer and each index's extent, loaded in the entry block at first
    /// use (see [`Gen::buf`])
    bufs: Vec<Option<Value>>,
    ext: Vec<Option<Value>>,
    bufs_p: Value,
    ext_p: Value,
    /// the last of the entry block's own loads and lazy loads: the next goes after it
    header_end: cranelift_codegen::ir::Inst,
    params: Vec<Value>,
    idx: Vec<Option<Value>>,
    /// values by (kind, node): kind 0 is the node's value; for a node and its negation, 1 is
    /// e^-|node| (shared by sigmoid, softplus and log_sigmoid), 2 log1p of it, 5 and 6
    /// sigmoid's 1/(1 + e^-|node|) and e^-|node|/(1 + e^-|node|); 9, 10, 13, 14 the same as
    /// vectors; in vector steps 3 is a node's lanes and 4 a uniform node's splat
    scopes: Vec<HashMap<(u8, ExprId), Value>>,
    /// the index each scope binds (a loop body's scope), parallel to `scopes`
    binds: Vec<Option<IndexId>>,
    err: Block,
    /// vector selects may branch (a speculative step, which has several blocks anyway)
    lazy: bool,
    /// where the error exit writes its record
    err_p: Value,
    funcs: HashMap<&'static str, FuncRef>,
    /// tensors whose gradient buffer is written directly
    trusted: MemFlagsData,
    /// the tensors the current stage writes (the others are read-only while it runs)
    written: Vec<bool>,
    /// while copies of a vector step are emitted to be interleaved: store vector math
    /// results to the anchor slot (see `vector::interleave`)
    anchor: bool,
    /// that stack slot, made at the first store
    anchor_slot: Option<cranelift_codegen::ir::StackSlot>,
    /// the stores to it
    anchors: std::collections::HashSet<cranelift_codegen::ir::Inst>,
    readonly: MemFlagsData,
    /// in a vector loop over `VecWork::Runs`: per run, the vector accumulators of a run whose
    /// target cell does not move with the loop (added to memory once, after the loop)
    vcells: Vec<Option<Vec<Variable>>>,
    frontend: cranelift_codegen::isa::TargetFrontendConfig,
    /// in a vector step: the columns of a table of short rows, by (slot, step's first cell)
    vcols: HashMap<(usize, Value), Vec<Value>>,
    /// a carried reduction (node) whose body is read from the value being stored (see
    /// [`Gen::fill_with_sum`])
    carried_alias: Option<(ExprId, ExprId)>,
    /// while a scatter's space is nested (see [`Gen::hold_targets`])
    hold: Option<Hold>,
    /// in a scalar loop over runs: runs whose target cell does not move with the loop,
    /// accumulated in a variable (loaded before the loop, stored after it)
    reg_targets: Vec<(TensorId, Variable)>,
    /// the parts of the logsumexp just emitted by [`Gen::logsumexp_of`]: its exponentials
    /// `exp(x_j - max)`, their sum and whether the maximum is finite
    lse_parts: Option<(Vec<Value>, Value, Value)>,
    /// conditions taken as true or false in the copy of a loop being emitted (see
    /// [`Gen::unswitched`])
    assumed: HashMap<ExprId, bool>,
    /// in a vector step whose reads are all known to be inside their tables (see
    /// [`Gen::trusted_reads`]): no checks, no slow paths
    unchecked: bool,
}

impl<'a, 'b> Gen<'a, 'b> {
    fn new(
        p: &'a Program,
        an: &'a Analysis<'a>,
        mut b: FunctionBuilder<'b>,
        module: &'b mut JITModule,
        f32: bool,
    ) -> Result<Gen<'a, 'b>> {
        let frontend = module.target_config();
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let args = b.block_params(entry)[0];
        let trusted = MemFlagsData::trusted();
        let readonly = MemFlagsData::trusted().with_readonly().with_can_move();
        let bufs_p = b.ins().load(types::I64, readonly, args, 0);
        let ext_p = b.ins().load(types::I64, readonly, args, 8);
        let par_p = b.ins().load(types::I64, readonly, args, 16);
        let err_p = b.ins().load(types::I64, readonly, args, 24);
        let header_end = b
            .func
            .dfg
            .value_def(err_p)
            .inst()
            .ok_or_else(|| internal("the error pointer is not an instruction's"))?;
        let nbuf = p.inputs.len() + p.tensors.len() + 1;
        let bufs = vec![None; nbuf];
        let ext = vec![None; p.indices.len()];
        let rt = if f32 { types::F32 } else { types::F64 };
        let params = p
            .params
            .iter()
            .enumerate()
            .map(|(k, q)| {
                let off = (8 * k) as i32;
                match q.ty {
                    Ty::Real => {
                        let v = b.ins().load(types::F64, readonly, par_p, off);
                        if f32 {
                            b.ins().fdemote(types::F32, v)
                        } else {
                            v
                        }
                    }
                    Ty::Int => b.ins().load(types::I64, readonly, par_p, off),
                    Ty::Bool => {
                        let v = b.ins().load(types::I64, readonly, par_p, off);
                        b.ins().icmp_imm_s(IntCC::NotEqual, v, 0)
                    }
                }
            })
            .collect();
        // The error exit: record (code, node, dim, value) and return 1. Its body is emitted
        // after the kernel's (`body`): Cranelift forbids leaving the entry block unfinished.
        let err = b.create_block();
        for _ in 0..4 {
            b.append_block_param(err, types::I64);
        }
        Ok(Gen {
            p,
            an,
            b,
            module,
            f32,
            lazy: false,
            rt,
            bufs,
            ext,
            bufs_p,
            ext_p,
            header_end,
            params,
            idx: vec![None; p.indices.len()],
            scopes: vec![HashMap::new()],
            binds: vec![None],
            err,
            err_p,
            funcs: HashMap::new(),
            trusted,
            readonly,
            written: vec![false; p.tensors.len()],
            anchor: false,
            anchor_slot: None,
            anchors: std::collections::HashSet::new(),
            assumed: HashMap::new(),
            unchecked: false,
            vcells: Vec::new(),
            frontend,
            vcols: HashMap::new(),
            carried_alias: None,
            hold: None,
            reg_targets: Vec::new(),
            lse_parts: None,
        })
    }

    /// The base pointer of slot `k`. Loaded in the entry block (so it dominates every use)
    /// the first time a part's function needs it: loading every table's pointer and every
    /// extent in every part made compiling grow with parts x tables (30,000 small tables:
    /// 9.7 GB).
    fn buf(&mut self, k: usize) -> Value {
        if let Some(v) = self.bufs[k] {
            return v;
        }
        let v = self.entry_load(self.bufs_p, 8 * k);
        self.bufs[k] = Some(v);
        v
    }

    /// The extent of index `k` (see [`Gen::buf`]).
    fn ext_at(&mut self, k: usize) -> Value {
        if let Some(v) = self.ext[k] {
            return v;
        }
        let v = self.entry_load(self.ext_p, 8 * k);
        self.ext[k] = Some(v);
        v
    }

    /// An i64 loaded from `base + off` in the entry block, after its header loads and the
    /// lazy loads before it (in the order of first use).
    fn entry_load(&mut self, base: Value, off: usize) -> Value {
        use cranelift_codegen::cursor::{Cursor, FuncCursor};
        let readonly = MemFlagsData::trusted().with_readonly().with_can_move();
        let mut pos = FuncCursor::new(self.b.func).at_inst(self.header_end);
        pos.next_inst();
        let v = pos.ins().load(types::I64, readonly, base, off as i32);
        if let Some(i) = self.b.func.dfg.value_def(v).inst() {
            self.header_end = i;
        }
        v
    }

    fn body(&mut self, stages: &[Stage]) -> Result<()> {
        // Closed reductions two stages evaluate (RMSE's `mean(i: z * z)`: in the output, and
        // in the gradient's guarded value) computed once, first: inside a stage they may sit
        // in a branch, whose values the next stage cannot reuse. Only reductions that cannot
        // fail (computing one no stage needs, where their conditions fail, costs time only)
        // and read no table (not filled yet up here); not those a pass carries, nor what they
        // read (that pass computes them).
        let carried: Vec<ExprId> = stages
            .iter()
            .filter_map(|st| match st {
                Stage::Scatter { groups, .. } => Some(groups),
                _ => None,
            })
            .flatten()
            .flat_map(|g| g.carried.iter().flatten().copied())
            .collect();
        // (sparse: a part is a few stages of a pool that may be large)
        let reach: Vec<Vec<ExprId>> = stages
            .iter()
            .map(|st| reach_sparse(self.p, &stage_roots(st)))
            .collect();
        let in_carried: std::collections::HashSet<ExprId> =
            reach_sparse(self.p, &carried).into_iter().collect();
        let mut stages_reaching: HashMap<ExprId, usize> = HashMap::new();
        for e in reach.iter().flatten() {
            if matches!(self.p.pool.get(*e), Expr::Reduce(..)) {
                *stages_reaching.entry(*e).or_default() += 1;
            }
        }
        // (in pool order: a reduction after those in its body)
        let mut candidates: Vec<ExprId> = stages_reaching
            .iter()
            .filter(|(_, n)| **n >= 2)
            .map(|(e, _)| *e)
            .collect();
        candidates.sort();
        let shared: Vec<(ExprId, When)> = candidates
            .into_iter()
            .filter(|e| {
                !in_carried.contains(e)
                    && self.p.pool.free(*e).is_empty()
                    && self.an.safe(*e)
                    && !self
                        .p
                        .pool
                        .reaches(&[*e], |_, x| matches!(x, Expr::Tensor(..)))
            })
            .map(|e| (e, When::Always))
            .collect();
        self.hoist(&shared, None, &[])?;
        let mut k = 0;
        while k < stages.len() {
            if let Some(f) = stages
                .get(k + 1)
                .and_then(|next| summed_fill(self.p, &stages[k], next))
            {
                self.fill_with_sum(&f)?;
                k += 2;
                continue;
            }
            self.stage(&stages[k])?;
            k += 1;
        }
        let zero = self.b.ins().iconst(types::I64, 0);
        self.b.ins().return_(&[zero]);
        self.b.switch_to_block(self.err);
        let ps = self.b.block_params(self.err).to_vec();
        for (k, v) in ps.iter().enumerate() {
            self.b
                .ins()
                .store(self.trusted, *v, self.err_p, (8 * k) as i32);
        }
        let one = self.b.ins().iconst(types::I64, 1);
        self.b.ins().return_(&[one]);
        Ok(())
    }

    // ---- scopes and loops ----

    fn lookup(&self, e: ExprId) -> Option<Value> {
        self.lookup_key((0, e))
    }
    fn lookup_key(&self, key: (u8, ExprId)) -> Option<Value> {
        let free = self.p.pool.free(key.1);
        for (k, s) in self.scopes.iter().enumerate().rev() {
            if let Some(v) = s.get(&key) {
                return Some(*v);
            }
            // Below a scope that rebinds an index the node depends on, values are stale
            // (a reduction over `i` inside a loop over `i`).
            if let Some(i) = self.binds[k] {
                if free.contains(&i) {
                    return None;
                }
            }
        }
        None
    }
    fn remember(&mut self, e: ExprId, v: Value) {
        self.remember_key((0, e), v)
    }
    fn remember_key(&mut self, key: (u8, ExprId), v: Value) {
        if let Some(s) = self.scopes.last_mut() {
            s.insert(key, v);
        }
    }
    fn push(&mut self) {
        self.scopes.push(HashMap::new());
        self.binds.push(None);
    }
    fn pop(&mut self) {
        self.scopes.pop();
        self.binds.pop();
    }
    fn bound(&self) -> Vec<IndexId> {
        (0..self.idx.len())
            .filter(|k| self.idx[*k].is_some())
            .map(|k| IndexId(k as u32))
            .collect()
    }

    /// The value of condition `c` wherever the loops now open are running, if that decides it
    /// (see `Analysis::known`), in a copy of a loop made for some conditions' values given
    /// those.
    fn known(&self, c: ExprId) -> Option<bool> {
        self.an
            .known_given(c, &|i: IndexId| self.idx[i.ix()].is_some(), &|e| {
                self.assumed.get(&e).copied()
            })
    }

    /// Emits the reductions worth computing here (see `Analysis::hoistable`).
    fn hoist(
        &mut self,
        roots: &[(ExprId, When)],
        new: Option<IndexId>,
        deeper: &[IndexId],
    ) -> Result<()> {
        let bound = self.bound();
        for r in self.an.hoistable(roots, &bound, new, deeper) {
            self.emit(r)?;
        }
        Ok(())
    }

    /// A counted loop over index `ix` (down from the top when `reverse`), do-while form.
    fn for_each(
        &mut self,
        ix: IndexId,
        reverse: bool,
        f: &mut dyn FnMut(&mut Self) -> Result<()>,
    ) -> Result<()> {
        self.for_each_from(ix, None, reverse, f)
    }

    /// [`Gen::for_each`] starting at cell `from` (forward loops only).
    fn for_each_from(
        &mut self,
        ix: IndexId,
        from: Option<Value>,
        reverse: bool,
        f: &mut dyn FnMut(&mut Self) -> Result<()>,
    ) -> Result<()> {
        let n = self.ext_at(ix.ix());
        let var = self.b.declare_var(types::I64);
        let start = match from {
            Some(s) => s,
            None if reverse => self.b.ins().iadd_imm_s(n, -1),
            None => self.b.ins().iconst(types::I64, 0),
        };
        self.b.def_var(var, start);
        let body = self.b.create_block();
        let exit = self.b.create_block();
        let nonempty = if reverse {
            self.b.ins().icmp_imm_s(IntCC::SignedGreaterThan, n, 0)
        } else {
            self.b.ins().icmp(IntCC::SignedLessThan, start, n)
        };
        self.b.ins().brif(nonempty, body, &[], exit, &[]);
        self.b.switch_to_block(body);
        let k = self.b.use_var(var);
        self.in_cell(ix, k, f)?;
        let k = self.b.use_var(var);
        let (next, more) = if reverse {
            let next = self.b.ins().iadd_imm_s(k, -1);
            (
                next,
                self.b
                    .ins()
                    .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, next, 0),
            )
        } else {
            let next = self.b.ins().iadd_imm_s(k, 1);
            (next, self.b.ins().icmp(IntCC::SignedLessThan, next, n))
        };
        self.b.def_var(var, next);
        self.b.ins().brif(more, body, &[], exit, &[]);
        self.b.switch_to_block(exit);
        Ok(())
    }

    /// `f` with the loop index `ix` bound to `k`, in a scope of its own (a loop body's).
    fn in_cell(
        &mut self,
        ix: IndexId,
        k: Value,
        f: &mut dyn FnMut(&mut Self) -> Result<()>,
    ) -> Result<()> {
        let saved = self.idx[ix.ix()].replace(k);
        self.push();
        if let Some(b) = self.binds.last_mut() {
            *b = Some(ix);
        }
        let r = f(self);
        self.pop();
        self.idx[ix.ix()] = saved;
        r
    }

    /// A loop over index `ix` emitting `lanes` copies of the body per iteration (cells k, k+1,
    /// ...), each in its own scope, then a loop over the remaining cells with copy 0.
    fn for_each_unrolled(
        &mut self,
        ix: IndexId,
        lanes: usize,
        f: &mut dyn FnMut(&mut Self, usize) -> Result<()>,
    ) -> Result<()> {
        let n = self.ext_at(ix.ix());
        let main_n = self.b.ins().band_imm_s(n, -(lanes as i64));
        let var = self.b.declare_var(types::I64);
        let zero = self.b.ins().iconst(types::I64, 0);
        self.b.def_var(var, zero);
        let body = self.b.create_block();
        let tail_pre = self.b.create_block();
        let nonempty = self.b.ins().icmp_imm_s(IntCC::SignedGreaterThan, main_n, 0);
        self.b.ins().brif(nonempty, body, &[], tail_pre, &[]);
        self.b.switch_to_block(body);
        let k = self.b.use_var(var);
        let saved = self.idx[ix.ix()];
        for lane in 0..lanes {
            let kl = self.b.ins().iadd_imm_s(k, lane as i64);
            self.idx[ix.ix()] = Some(kl);
            self.push();
            if let Some(b) = self.binds.last_mut() {
                *b = Some(ix);
            }
            let r = f(self, lane);
            self.pop();
            if let Err(e) = r {
                self.idx[ix.ix()] = saved;
                return Err(e);
            }
        }
        self.idx[ix.ix()] = saved;
        let k = self.b.use_var(var);
        let next = self.b.ins().iadd_imm_s(k, lanes as i64);
        self.b.def_var(var, next);
        let more = self.b.ins().icmp(IntCC::SignedLessThan, next, main_n);
        self.b.ins().brif(more, body, &[], tail_pre, &[]);
        // The remaining cells, one at a time.
        self.b.switch_to_block(tail_pre);
        let tail = self.b.create_block();
        let exit = self.b.create_block();
        let k = self.b.use_var(var);
        let left = self.b.ins().icmp(IntCC::SignedLessThan, k, n);
        self.b.ins().brif(left, tail, &[], exit, &[]);
        self.b.switch_to_block(tail);
        let k = self.b.use_var(var);
        self.idx[ix.ix()] = Some(k);
        self.push();
        if let Some(b) = self.binds.last_mut() {
            *b = Some(ix);
        }
        let r = f(self, 0);
        self.pop();
        self.idx[ix.ix()] = saved;
        r?;
        let k = self.b.use_var(var);
        let next = self.b.ins().iadd_imm_s(k, 1);
        self.b.def_var(var, next);
        let more = self.b.ins().icmp(IntCC::SignedLessThan, next, n);
        self.b.ins().brif(more, tail, &[], exit, &[]);
        self.b.switch_to_block(exit);
        Ok(())
    }

    /// Nested loops over `loops` (row-major, or reverse row-major), hoisting reductions of
    /// `roots` at each level, accumulating `carried` reductions (one list per level), with
    /// `inner` at the innermost level.
    fn nest(
        &mut self,
        loops: &[IndexId],
        reverse: bool,
        roots: &[(ExprId, When)],
        carried: &[Vec<ExprId>],
        vw: Option<&VecWork>,
        inner: &mut dyn FnMut(&mut Self) -> Result<()>,
    ) -> Result<()> {
        let Some((&ix, rest)) = loops.split_first() else {
            return inner(self);
        };
        let level_carried = carried.first().cloned().unwrap_or_default();
        let deeper_carried = if carried.is_empty() {
            carried
        } else {
            &carried[1..]
        };
        let mut accs = Vec::new();
        for node in level_carried {
            let Expr::Reduce(red, _, body) = self.p.pool.get(node).clone() else {
                return Err(internal("carried node is not a reduction"));
            };
            let body = match self.carried_alias {
                Some((n, b)) if n == node => b,
                _ => body,
            };
            let (ty, init) = match red {
                Red::Sum | Red::Mean => (types::F64, self.b.ins().f64const(0.0)),
                Red::Max => (self.rt, self.real_const(f64::NEG_INFINITY)),
                Red::Min => (self.rt, self.real_const(f64::INFINITY)),
                Red::LogSumExp => return Err(internal("logsumexp is not carried")),
            };
            let var = self.b.declare_var(ty);
            self.b.def_var(var, init);
            accs.push(Carried {
                node,
                red,
                body,
                var,
                shift: None,
            });
        }
        // A small innermost body carrying accumulators runs 4 cells per iteration with 4
        // independent accumulators (summed pairwise at the end): the loop is then bound by
        // throughput rather than by the latency of one chain of additions.
        let mut body_roots: Vec<ExprId> = roots.iter().map(|r| r.0).collect();
        body_roots.extend(accs.iter().map(|c| c.body));
        let size = self.an.reach(&body_roots).iter().filter(|x| **x).count();
        let lanes = if rest.is_empty() && !reverse && !accs.is_empty() && size <= 64 {
            4
        } else {
            1
        };
        let mut vars: Vec<Vec<Variable>> = vec![accs.iter().map(|c| c.var).collect()];
        for _ in 1..lanes {
            let mut v = Vec::new();
            for c in &accs {
                let ty = if matches!(c.red, Red::Sum | Red::Mean) {
                    types::F64
                } else {
                    self.rt
                };
                let init = self.b.use_var(c.var);
                let var = self.b.declare_var(ty);
                self.b.def_var(var, init);
                v.push(var);
            }
            vars.push(v);
        }
        let mut step = |g: &mut Self, lane: usize| -> Result<()> {
            g.hoist(roots, Some(ix), rest)?;
            g.nest(rest, reverse, roots, deeper_carried, vw, inner)?;
            for (c, var) in accs.iter().zip(&vars[lane]) {
                let v = g.emit(c.body)?;
                let acc = g.b.use_var(*var);
                let nv = match c.red {
                    Red::Sum | Red::Mean => {
                        let v = g.widen(v);
                        g.b.ins().fadd(acc, v)
                    }
                    Red::Max => g.b.ins().fmax(acc, v),
                    _ => g.b.ins().fmin(acc, v),
                };
                g.b.def_var(*var, nv);
            }
            Ok(())
        };
        let vectorize = match vw {
            Some(w) if rest.is_empty() => self.can_vectorize(w, &accs, ix, reverse),
            _ => None,
        };
        if let (Some(speculative), Some(w)) = (vectorize, vw) {
            // (a reverse fill vectorized reads its own table in other rows only: its cells
            // along `ix` may run forward)
            let roots = vector::work_roots(w, &accs);
            self.unswitched(&roots, ix, UNSWITCH_COPIES, &mut |g: &mut Self| {
                if speculative {
                    g.speculative_loop(w, ix, &mut |g: &mut Self| step(g, 0))
                } else {
                    let start = g.vector_loop(w, &accs, ix)?;
                    g.for_each_from(ix, Some(start), false, &mut |g: &mut Self| step(g, 0))
                }
            })?;
        } else if lanes == 1 {
            let held = self.hold_targets(vw, &accs, rest, ix)?;
            self.for_each(ix, reverse, &mut |g: &mut Self| step(g, 0))?;
            self.release_targets(held);
        } else {
            self.for_each_unrolled(ix, lanes, &mut step)?;
            // Combine pairwise: ((a0 + a1) + (a2 + a3)), a fixed order.
            for (k, c) in accs.iter().enumerate() {
                let mut vals: Vec<Value> = vars.iter().map(|v| self.b.use_var(v[k])).collect();
                while vals.len() > 1 {
                    let mut next = Vec::new();
                    for pair in vals.chunks(2) {
                        next.push(match pair {
                            [a, b] => match c.red {
                                Red::Sum | Red::Mean => self.b.ins().fadd(*a, *b),
                                Red::Max => self.b.ins().fmax(*a, *b),
                                _ => self.b.ins().fmin(*a, *b),
                            },
                            [a] => *a,
                            _ => return Err(internal("empty chunk")),
                        });
                    }
                    vals = next;
                }
                self.b.def_var(c.var, vals[0]);
            }
        }
        for c in &accs {
            let acc = self.b.use_var(c.var);
            let v = match c.red {
                Red::Sum => self.narrow(acc),
                Red::Mean => {
                    let n = self.ext_at(self.reduce_index(c.node)?.ix());
                    let nf = self.b.ins().fcvt_from_sint(types::F64, n);
                    let m = self.b.ins().fdiv(acc, nf);
                    self.narrow(m)
                }
                _ => acc,
            };
            self.remember(c.node, v);
        }
        Ok(())
    }

    /// Before a scalar innermost loop over `ix` whose body adds runs to tables (a group's
    /// runs, `vw`, or a scatter's when `ix` is its innermost space index, [`Gen::hold`]): the
    /// runs that add to one cell for the whole loop (an index safe, in range and free of
    /// `ix`), when no other run targets their table and nothing in the loop reads it. Their
    /// cell is loaded into a variable that [`Gen::run`] adds to (the same additions in the
    /// same order as through memory: the same bits) and [`Gen::release_targets`] stores.
    /// CTC's `lse_grad[b, t] += -emit_grad[b, t, u]` otherwise went through memory at every
    /// `u`, a chain of stores and loads.
    fn hold_targets(
        &mut self,
        vw: Option<&VecWork>,
        accs: &[Carried],
        rest: &[IndexId],
        ix: IndexId,
    ) -> Result<Vec<(usize, Value, Variable)>> {
        let mut held = Vec::new();
        if !rest.is_empty() || !self.reg_targets.is_empty() {
            return Ok(held);
        }
        // (candidates, and every run in the loop: none may read or target a held table)
        let (runs, all, carried) = match (vw, &self.hold) {
            (Some(VecWork::Runs(runs)), _) => (runs.to_vec(), runs.to_vec(), vec![]),
            (None, Some(h)) if h.ix == ix => (h.runs.clone(), h.all.clone(), h.carried.clone()),
            _ => return Ok(held),
        };
        let p = self.p;
        let roots: Vec<ExprId> = all
            .iter()
            .flat_map(|r| r.terms.iter())
            .flat_map(|t| {
                let mut v = contribution_roots(t);
                v.extend(t.index.iter().copied());
                v
            })
            .chain(accs.iter().map(|c| c.body))
            .chain(carried)
            .collect();
        for r in &runs {
            let dims = &p.tensors[r.target.ix()].indices;
            let fixed = !r.direct
                && all.iter().filter(|o| o.target == r.target).count() == 1
                && r.index.len() == dims.len()
                && r.index.iter().zip(dims).all(|(a, d)| {
                    self.an.safe(*a)
                        && !p.pool.free(*a).contains(&ix)
                        && p.pool.free(*a).iter().all(|f| self.idx[f.ix()].is_some())
                        && crate::schedule::in_range(p, *a, *d)
                })
                && !p.pool.reaches(
                    &roots,
                    |_, x| matches!(x, Expr::Tensor(t, _) if *t == r.target),
                );
            if !fixed {
                continue;
            }
            let slot = p.inputs.len() + r.target.ix();
            let mut off = self.b.ins().iconst(types::I64, 0);
            for (a, d) in r.index.iter().zip(dims) {
                let v = self.emit(*a)?;
                let ext_v = self.ext_at(d.ix());
                let m = self.b.ins().imul(off, ext_v);
                off = self.b.ins().iadd(m, v);
            }
            let a = self.addr(slot, Elem::Real, off);
            let old = self.b.ins().load(self.rt, self.trusted, a, 0);
            let var = self.b.declare_var(self.rt);
            self.b.def_var(var, old);
            self.reg_targets.push((r.target, var));
            held.push((slot, off, var));
        }
        Ok(held)
    }

    /// After the loop: the held cells' sums back to memory.
    fn release_targets(&mut self, held: Vec<(usize, Value, Variable)>) {
        if held.is_empty() {
            return;
        }
        for (slot, off, var) in held {
            let v = self.b.use_var(var);
            let a = self.addr(slot, Elem::Real, off);
            self.b.ins().store(self.trusted, v, a, 0);
        }
        self.reg_targets.clear();
    }

    fn reduce_index(&self, e: ExprId) -> Result<IndexId> {
        match self.p.pool.get(e) {
            Expr::Reduce(_, i, _) => Ok(*i),
            _ => Err(internal("not a reduction")),
        }
    }

    // ---- stages ----

    fn stage(&mut self, st: &Stage) -> Result<()> {
        self.written.iter_mut().for_each(|w| *w = false);
        match st {
            Stage::Zero(t) => self.written[t.ix()] = true,
            Stage::Fill {
                tensor: Some(t),
                also,
                ..
            } => {
                self.written[t.ix()] = true;
                for (w, _) in also {
                    self.written[w.ix()] = true;
                }
            }
            Stage::Fill { tensor: None, .. } => {}
            Stage::Scatter { groups, .. } => {
                for r in groups.iter().flat_map(|g| g.runs.iter()) {
                    self.written[r.target.ix()] = true;
                }
            }
        }
        match st {
            Stage::Zero(t) => {
                // One memset over the whole table (its size was bounded when the call was
                // bound): a loop nest would pay a loop header per row of `x[n, 4]`.
                let slot = self.p.inputs.len() + t.ix();
                let mut cells = self.b.ins().iconst(types::I64, 1);
                for d in &self.p.tensors[t.ix()].indices {
                    let ext_v = self.ext_at(d.ix());
                    cells = self.b.ins().imul(cells, ext_v);
                }
                let zero = self.b.ins().iconst(types::I64, 0);
                let base = self.addr(slot, Elem::Real, zero);
                let bytes = self
                    .b
                    .ins()
                    .imul_imm_s(cells, Elem::Real.size(self.f32) as i64);
                let byte = self.b.ins().iconst(types::I8, 0);
                self.b.call_memset(self.frontend, base, byte, bytes);
                Ok(())
            }
            Stage::Fill {
                tensor,
                indices,
                body,
                reverse,
                also,
            } => {
                let (slot, elem) = match tensor {
                    Some(t) => (
                        self.p.inputs.len() + t.ix(),
                        Elem::of(self.p.tensors[t.ix()].ty),
                    ),
                    None => (
                        self.p.inputs.len() + self.p.tensors.len(),
                        Elem::of(self.p.output_ty()),
                    ),
                };
                let body = *body;
                let also: Vec<(usize, ExprId)> = also
                    .iter()
                    .map(|(w, e)| (self.p.inputs.len() + w.ix(), *e))
                    .collect();
                let mut roots = vec![(body, When::Always)];
                roots.extend(also.iter().map(|(_, e)| (*e, When::Always)));
                self.hoist(&roots, None, indices)?;
                let dims = indices.clone();
                let vw = VecWork::Fill {
                    slot,
                    body,
                    dims: indices,
                    also: &also,
                };
                let vw = (elem == Elem::Real).then_some(&vw);
                self.nest(indices, *reverse, &roots, &[], vw, &mut |g: &mut Self| {
                    // The shares' logsumexp first, so that its parts are at hand for them
                    // (the body's branches find it computed).
                    for l in also
                        .iter()
                        .filter_map(|(_, e)| g.p.pool.lse_share(*e).map(|s| s.1))
                    {
                        g.emit(l)?;
                    }
                    let v = g.emit(body)?;
                    let a = g.row_major_addr(slot, elem, &dims)?;
                    g.b.ins().store(g.trusted, v, a, 0);
                    for (w, e) in &also {
                        let v = g.emit(*e)?;
                        let a = g.row_major_addr(*w, Elem::Real, &dims)?;
                        g.b.ins().store(g.trusted, v, a, 0);
                    }
                    Ok(())
                })
            }
            Stage::Scatter {
                space,
                reverse,
                groups,
            } => {
                let roots: Vec<(ExprId, When)> = groups
                    .iter()
                    .flat_map(|g| g.runs.iter())
                    .flat_map(|r| r.terms.iter().flat_map(contribution_hoist_roots))
                    .collect();
                self.hoist(&roots, None, space)?;
                // (runs outside any group loop may add to one cell along the innermost index)
                self.hold = space.last().map(|i| {
                    let runs = groups.iter().filter(|g| g.extra.is_empty());
                    let all = groups.iter().flat_map(|g| g.runs.iter().cloned());
                    let carried = groups
                        .iter()
                        .flat_map(|g| g.carried.iter().flatten().copied());
                    Hold {
                        ix: *i,
                        runs: runs.flat_map(|g| g.runs.iter().cloned()).collect(),
                        all: all.collect(),
                        carried: carried.collect(),
                    }
                });
                let r = self.nest(space, *reverse, &roots, &[], None, &mut |g: &mut Self| {
                    for grp in groups {
                        g.group(grp)?;
                    }
                    Ok(())
                });
                self.hold = None;
                r
            }
        }
    }

    /// A fill of `t[.., c]` and the next stage's fill of `s[..]`, whose body sums `t`'s row
    /// (`node`, see [`summed_fill`]), in one pass over each row: the row's cells are stored
    /// and summed as they are computed (softmax's exponentials and their sum), then `s`'s cell
    /// is filled with the sum at hand. The sum is the same, bit for bit, as the separate
    /// pass's (the same lanes and steps, in the same order); it is computed even where `s`'s
    /// body would not need it, which is safe: it reads only the row just stored.
    fn fill_with_sum(&mut self, f: &SummedFill) -> Result<()> {
        let SummedFill {
            t,
            indices,
            body,
            s,
            s_body,
            node,
        } = *f;
        let outer = &indices[..indices.len() - 1];
        self.written.iter_mut().for_each(|w| *w = false);
        self.written[t.ix()] = true;
        self.written[s.ix()] = true;
        let (slot, s_slot) = (self.p.inputs.len() + t.ix(), self.p.inputs.len() + s.ix());
        let c = &indices[outer.len()..];
        let roots = [(body, When::Always)];
        self.hoist(&roots, None, indices)?;
        let vw = VecWork::Fill {
            slot,
            body,
            dims: indices,
            also: &[],
        };
        self.carried_alias = Some((node, body));
        let r = self.nest(outer, false, &roots, &[], None, &mut |g: &mut Self| {
            g.nest(
                c,
                false,
                &roots,
                &[vec![node]],
                Some(&vw),
                &mut |g: &mut Self| {
                    let v = g.emit(body)?;
                    let a = g.row_major_addr(slot, Elem::Real, indices)?;
                    g.b.ins().store(g.trusted, v, a, 0);
                    Ok(())
                },
            )?;
            let v = g.emit(s_body)?;
            let a = g.row_major_addr(s_slot, Elem::Real, outer)?;
            g.b.ins().store(g.trusted, v, a, 0);
            Ok(())
        });
        self.carried_alias = None;
        r
    }

    fn group(&mut self, grp: &Group) -> Result<()> {
        let roots: Vec<(ExprId, When)> = grp
            .runs
            .iter()
            .flat_map(|r| r.terms.iter().flat_map(contribution_hoist_roots))
            .collect();
        // Work the carried reductions' bodies share with the contributions, computed once.
        let mut lists: Vec<Vec<ExprId>> = grp
            .runs
            .iter()
            .flat_map(|r| r.terms.iter().map(contribution_roots))
            .collect();
        if let Some(last) = grp.carried.last() {
            for c in last {
                if let Expr::Reduce(_, _, body) = self.p.pool.get(*c) {
                    lists.push(vec![*body]);
                }
            }
        }
        let vw = VecWork::Runs(&grp.runs);
        self.nest(
            &grp.extra,
            false,
            &roots,
            &grp.carried,
            Some(&vw),
            &mut |g: &mut Self| {
                g.shared(&lists)?;
                for r in &grp.runs {
                    g.run(r)?;
                }
                Ok(())
            },
        )
    }

    /// Emits the nodes that at least two of `lists` share and that are safe to compute
    /// before their guards (and hold no loop), so each is computed once.
    fn shared(&mut self, lists: &[Vec<ExprId>]) -> Result<()> {
        if lists.len() < 2 {
            return Ok(());
        }
        let count = self.an.reach_counts(lists);
        for (k, c) in count.iter().enumerate() {
            let e = ExprId(k as u32);
            if *c >= 2 && self.speculable(e) {
                self.emit(e)?;
            }
        }
        Ok(())
    }

    /// Worth computing here, ahead of where it is used: a safe, loop-free, non-leaf node
    /// whose indices are all bound.
    fn speculable(&self, e: ExprId) -> bool {
        self.an.safe(e)
            && self.an.flat(e)
            && !self.p.pool.get(e).is_leaf()
            && self
                .p
                .pool
                .free(e)
                .iter()
                .all(|f| self.idx[f.ix()].is_some())
    }

    /// `r` without the guards the open loops decide: terms under a guard known false are
    /// dropped, guards known true removed (a mean's `N != 0`).
    pub(crate) fn prune(&self, r: &Run) -> Run {
        let mut out = r.clone();
        out.terms.retain_mut(|t| {
            let mut keep = true;
            t.guards.retain(|g| match self.known(*g) {
                Some(v) => {
                    keep &= v;
                    false
                }
                None => true,
            });
            keep
        });
        out
    }

    fn run(&mut self, r: &Run) -> Result<()> {
        let r = &self.prune(r);
        let slot = self.p.inputs.len() + r.target.ix();
        let index_safe = r.index.iter().all(|e| self.an.safe(*e));
        if !index_safe {
            // Interpreter order for each term: guards, then the index, then the value.
            for t in &r.terms {
                let single = Run {
                    target: r.target,
                    index: t.index.clone(),
                    direct: false,
                    terms: vec![t.clone()],
                };
                self.push();
                let done = self.b.create_block();
                self.guards(&t.guards, done)?;
                let off = self.target_offset(&single, done)?;
                let v = self.emit(t.value)?;
                self.accumulate(slot, off, v);
                self.b.ins().jump(done, &[]);
                self.b.switch_to_block(done);
                self.pop();
            }
            return Ok(());
        }
        self.push();
        let lists: Vec<Vec<ExprId>> = r.terms.iter().map(contribution_roots).collect();
        self.shared(&lists)?;
        let done = self.b.create_block();
        enum Target {
            Held(Variable),
            Cell(Value),
        }
        let held = self
            .reg_targets
            .iter()
            .find(|(t, _)| *t == r.target)
            .map(|(_, v)| *v);
        let target = match held {
            Some(var) => Target::Held(var),
            None => Target::Cell(self.target_offset(r, done)?),
        };
        // One unguarded term `-x` added into a cell: the cell takes `- x` (a + (-x) is a - x,
        // bit for bit), with no negation (CTC's `lse_grad[b, t] += -emit_grad[b, t, u]`).
        let negated = match r.terms.as_slice() {
            [t] if !r.direct && t.guards.is_empty() => match self.p.pool.get(t.value) {
                Expr::Unary(Un::Neg, x) => Some(*x),
                _ => None,
            },
            _ => None,
        };
        if let Some(x) = negated {
            let v = self.emit(x)?;
            match target {
                Target::Held(var) => {
                    let old = self.b.use_var(var);
                    let new = self.b.ins().fsub(old, v);
                    self.b.def_var(var, new);
                }
                Target::Cell(off) => {
                    let a = self.addr(slot, Elem::Real, off);
                    let old = self.b.ins().load(self.rt, self.trusted, a, 0);
                    let new = self.b.ins().fsub(old, v);
                    self.b.ins().store(self.trusted, new, a, 0);
                }
            }
            self.b.ins().jump(done, &[]);
            self.b.switch_to_block(done);
            self.pop();
            return Ok(());
        }
        let mut acc: Option<Value> = None;
        for t in &r.terms {
            // Cheap, safe guards and value: compute it and select (no branch).
            let mut budget = 16;
            let flat = t.guards.iter().all(|g| self.cheap(*g, &mut budget))
                && self.cheap(t.value, &mut budget);
            if flat {
                let mut cond: Option<Value> = None;
                for g in &t.guards {
                    let c = self.emit(*g)?;
                    cond = Some(match cond {
                        Some(a) => self.b.ins().band(a, c),
                        None => c,
                    });
                }
                // as the vector lanes do it (see `later_negation`)
                let negated = acc.and_then(|_| later_negation(self.p, t.value));
                let v = self.emit(negated.unwrap_or(t.value))?;
                let z = self.real_const(0.0);
                let v = match cond {
                    Some(c) => self.b.ins().select(c, v, z),
                    None => v,
                };
                acc = Some(match (acc, negated) {
                    (Some(a), Some(_)) => self.b.ins().fsub(a, v),
                    (Some(a), None) => self.b.ins().fadd(a, v),
                    (None, _) => v,
                });
                continue;
            }
            self.push();
            let skip = self.b.create_block();
            let join = self.b.create_block();
            self.b.append_block_param(join, self.rt);
            let before = match acc {
                Some(a) => a,
                None => self.real_const(0.0),
            };
            self.guards_to(&t.guards, skip)?;
            let v = self.emit(t.value)?;
            let sum = match acc {
                Some(a) => self.b.ins().fadd(a, v),
                None => v,
            };
            self.b.ins().jump(join, &[BlockArg::Value(sum)]);
            self.b.switch_to_block(skip);
            self.b.ins().jump(join, &[BlockArg::Value(before)]);
            self.b.switch_to_block(join);
            self.pop();
            acc = Some(self.b.block_params(join)[0]);
        }
        let v = match acc {
            Some(a) => a,
            None => self.real_const(0.0),
        };
        match target {
            Target::Held(var) => {
                let old = self.b.use_var(var);
                let new = self.b.ins().fadd(old, v);
                self.b.def_var(var, new);
            }
            Target::Cell(off) if r.direct => self.store(slot, Elem::Real, off, v),
            Target::Cell(off) => self.accumulate(slot, off, v),
        }
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(done);
        self.pop();
        Ok(())
    }

    /// Branches to `skip` unless every guard holds (evaluated in order, lazily).
    fn guards_to(&mut self, guards: &[ExprId], skip: Block) -> Result<()> {
        for g in guards {
            let c = self.emit(*g)?;
            let next = self.b.create_block();
            self.b.ins().brif(c, next, &[], skip, &[]);
            self.b.switch_to_block(next);
        }
        Ok(())
    }

    fn guards(&mut self, guards: &[ExprId], skip: Block) -> Result<()> {
        self.guards_to(guards, skip)
    }

    /// The target cell's offset; branches to `skip` when the index is out of the table
    /// (where the forward pass read a pad, which has no gradient).
    fn target_offset(&mut self, r: &Run, skip: Block) -> Result<Value> {
        let dims = self.p.tensors[r.target.ix()].indices.clone();
        let mut off = self.b.ins().iconst(types::I64, 0);
        for (a, d) in r.index.iter().zip(&dims) {
            let v = self.emit(*a)?;
            let n = self.ext_at(d.ix());
            if !crate::schedule::in_range(self.p, *a, *d) {
                let bad = self.b.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, v, n);
                let next = self.b.create_block();
                self.b.ins().brif(bad, skip, &[], next, &[]);
                self.b.switch_to_block(next);
            }
            let m = self.b.ins().imul(off, n);
            off = self.b.ins().iadd(m, v);
        }
        Ok(off)
    }

    // ---- memory ----

    /// The address of the current cell of a table over `dims` (see [`Gen::addr_in_row`]).
    fn row_major_addr(&mut self, slot: usize, elem: Elem, dims: &[IndexId]) -> Result<Value> {
        let Some((last, outer)) = dims.split_last() else {
            let off = self.row_major(dims)?;
            return Ok(self.addr(slot, elem, off));
        };
        let row = self.row_major(outer)?;
        let ext_v = self.ext_at(last.ix());
        let row = self.b.ins().imul(row, ext_v);
        let v = self.idx[last.ix()].ok_or_else(|| internal("index not bound"))?;
        Ok(self.addr_in_row(slot, elem, row, v))
    }

    fn row_major(&mut self, dims: &[IndexId]) -> Result<Value> {
        let mut off = self.b.ins().iconst(types::I64, 0);
        for d in dims {
            let v = self.idx[d.ix()].ok_or_else(|| internal("index not bound"))?;
            let ext_v = self.ext_at(d.ix());
            let m = self.b.ins().imul(off, ext_v);
            off = self.b.ins().iadd(m, v);
        }
        Ok(off)
    }

    fn elem_type(&self, e: Elem) -> Type {
        match e {
            Elem::Real => self.rt,
            Elem::Int => types::I64,
            Elem::Bool => types::I8,
        }
    }

    fn addr(&mut self, slot: usize, elem: Elem, off: Value) -> Value {
        let base = self.buf(slot);
        self.addr_from(base, elem, off)
    }

    /// The address of cell `off` of the row of `slot` that starts at cell `row`: the row's
    /// address (`row` does not depend on the loop index, so this part is computed once, out
    /// of the loop) plus the cell's, `vmovups d(rowbase, u, 4)` instead of adding the row's
    /// offset to `u` and the table's base to that in every step.
    fn addr_in_row(&mut self, slot: usize, elem: Elem, row: Value, off: Value) -> Value {
        let size = elem.size(self.f32) as i64;
        let bytes = if size == 1 {
            row
        } else {
            self.b.ins().imul_imm_s(row, size)
        };
        let base = self.buf(slot);
        let base = self.b.ins().iadd(base, bytes);
        self.addr_from(base, elem, off)
    }

    fn addr_from(&mut self, base: Value, elem: Elem, off: Value) -> Value {
        let size = elem.size(self.f32) as i64;
        // A constant the offset adds (an interleaved copy's `k + 4`) goes last, where the
        // load or store takes it as its displacement: `vmovups 16(base, x, 4)` instead of a
        // `lea` per copy.
        // (a displacement out of i32 range: the offset as it was)
        let (x, c) = self.split_const(off, 4);
        let (off, disp) = match c.checked_mul(size).map(i32::try_from) {
            Some(Ok(d)) => (x, d),
            _ => (off, 0),
        };
        let bytes = if size == 1 {
            off
        } else {
            self.b.ins().imul_imm_s(off, size)
        };
        let a = self.b.ins().iadd(base, bytes);
        if disp == 0 {
            a
        } else {
            self.b.ins().iadd_imm_s(a, disp as i64)
        }
    }

    /// `v` as `x + c` where `c` is the sum of the constants `v`'s additions add (looking
    /// `depth` additions deep), and `x` the rest (rebuilt when a constant sat inside).
    fn split_const(&mut self, v: Value, depth: u32) -> (Value, i64) {
        use cranelift_codegen::ir::{InstructionData, Opcode, ValueDef};
        if depth == 0 {
            return (v, 0);
        }
        let f = &*self.b.func;
        let ValueDef::Result(inst, 0) = f.dfg.value_def(v) else {
            return (v, 0);
        };
        let InstructionData::Binary {
            opcode: Opcode::Iadd,
            args: [a, b],
        } = f.dfg.insts[inst]
        else {
            return (v, 0);
        };
        if f.dfg.value_type(v) != types::I64 {
            return (v, 0);
        }
        let konst = |x: Value| match splat_const(f, x) {
            Some(Const::Int(c)) => Some(c),
            _ => None,
        };
        if let Some(c) = konst(b) {
            let (x, d) = self.split_const(a, depth - 1);
            return (x, c.wrapping_add(d));
        }
        if let Some(c) = konst(a) {
            let (x, d) = self.split_const(b, depth - 1);
            return (x, c.wrapping_add(d));
        }
        let (ax, ac) = self.split_const(a, depth - 1);
        let (bx, bc) = self.split_const(b, depth - 1);
        if ac == 0 && bc == 0 {
            return (v, 0);
        }
        let x = self.b.ins().iadd(ax, bx);
        (x, ac.wrapping_add(bc))
    }

    fn store(&mut self, slot: usize, elem: Elem, off: Value, v: Value) {
        let a = self.addr(slot, elem, off);
        self.b.ins().store(self.trusted, v, a, 0);
    }

    fn accumulate(&mut self, slot: usize, off: Value, v: Value) {
        let a = self.addr(slot, Elem::Real, off);
        let old = self.b.ins().load(self.rt, self.trusted, a, 0);
        let new = self.b.ins().fadd(old, v);
        self.b.ins().store(self.trusted, new, a, 0);
    }

    fn fail(&mut self, code: i64, node: ExprId, dim: usize, value: Value) {
        let c = self.b.ins().iconst(types::I64, code);
        let n = self.b.ins().iconst(types::I64, node.0 as i64);
        let d = self.b.ins().iconst(types::I64, dim as i64);
        let args = [
            BlockArg::Value(c),
            BlockArg::Value(n),
            BlockArg::Value(d),
            BlockArg::Value(value),
        ];
        self.b.ins().jump(self.err, &args);
    }

    /// Branches to the error exit when `bad` holds.
    fn check(&mut self, bad: Value, code: i64, node: ExprId, dim: usize, value: Value) {
        if self.unchecked {
            // (a trusted vector step: its reads were checked for the whole row, see
            // `Gen::trusted_reads`)
            return;
        }
        let fail = self.b.create_block();
        let ok = self.b.create_block();
        self.b.ins().brif(bad, fail, &[], ok, &[]);
        self.b.switch_to_block(fail);
        self.fail(code, node, dim, value);
        self.b.switch_to_block(ok);
    }

    /// A load of an input or tensor: checked indices (or the pad at constant offsets).
    fn load(&mut self, e: ExprId) -> Result<Value> {
        let p = self.p;
        let (slot, elem, dims, args, pad, readonly) = match p.pool.get(e) {
            Expr::Input(i, args) => (
                i.ix(),
                Elem::of(p.inputs[i.ix()].ty),
                &p.inputs[i.ix()].dims,
                args,
                None,
                true,
            ),
            Expr::Tensor(t, args) => {
                let tn = &p.tensors[t.ix()];
                (
                    p.inputs.len() + t.ix(),
                    Elem::of(tn.ty),
                    &tn.indices,
                    args,
                    tn.pad,
                    // (an adjoint or a recurrence is fixed while other stages run)
                    !self.written[t.ix()] || (!tn.recurrent && !tn.accumulated),
                )
            }
            _ => return Err(internal("not a load")),
        };
        let mut off = self.b.ins().iconst(types::I64, 0);
        // (the last dimension's row offset and cell, for the address)
        let mut row_cell: Option<(Value, Value)> = None;
        let mut inside: Option<Value> = None;
        let mut checked = false;
        for (k, (a, d)) in args.iter().zip(dims).enumerate() {
            let v = self.emit(*a)?;
            let n = self.ext_at(d.ix());
            let trivially = crate::schedule::in_range(p, *a, *d);
            if !trivially {
                let bad = self.b.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, v, n);
                if pad.is_some() && is_offset(p, *a) {
                    let ok = self.b.ins().bxor_imm_s(bad, 1);
                    inside = Some(match inside {
                        Some(x) => self.b.ins().band(x, ok),
                        None => ok,
                    });
                } else {
                    self.check(bad, ERR_RANGE, e, k, v);
                    checked = true;
                }
            }
            let m = self.b.ins().imul(off, n);
            off = self.b.ins().iadd(m, v);
            row_cell = Some((m, v));
        }
        // A load behind a range check (or a pad's emptiness test) must stay behind it:
        // `can_move` would let Cranelift hoist it out of a loop, above the check, and read
        // out of bounds (found by fuzzing: `max(j: m[i, lab[i]])` with lab[i] = 10^9).
        let flags = if readonly && !checked && inside.is_none() {
            self.readonly
        } else if readonly {
            MemFlagsData::trusted().with_readonly()
        } else {
            self.trusted
        };
        let ty = self.elem_type(elem);
        match (inside, pad) {
            (Some(ok), Some(pad)) => {
                // Branch-free: read cell 0 when outside (always valid: the read is only
                // emitted when... see below) and select the pad.
                let zero = self.b.ins().iconst(types::I64, 0);
                let safe_off = self.b.ins().select(ok, off, zero);
                let pad_v = self.emit(pad)?;
                let cells = self.row_count(dims);
                // An empty table has no cell 0: take the pad without reading.
                let nonempty = self.b.ins().icmp_imm_s(IntCC::SignedGreaterThan, cells, 0);
                let read = self.b.create_block();
                let join = self.b.create_block();
                self.b.append_block_param(join, ty);
                self.b
                    .ins()
                    .brif(nonempty, read, &[], join, &[BlockArg::Value(pad_v)]);
                self.b.switch_to_block(read);
                let a = self.addr(slot, elem, safe_off);
                let v = self.b.ins().load(ty, flags, a, 0);
                let r = self.b.ins().select(ok, v, pad_v);
                self.b.ins().jump(join, &[BlockArg::Value(r)]);
                self.b.switch_to_block(join);
                Ok(self.b.block_params(join)[0])
            }
            _ => {
                let a = match row_cell {
                    Some((row, cell)) => self.addr_in_row(slot, elem, row, cell),
                    None => self.addr(slot, elem, off),
                };
                Ok(self.b.ins().load(ty, flags, a, 0))
            }
        }
    }

    fn row_count(&mut self, dims: &[IndexId]) -> Value {
        let mut n = self.b.ins().iconst(types::I64, 1);
        for d in dims {
            let ext_v = self.ext_at(d.ix());
            n = self.b.ins().imul(n, ext_v);
        }
        n
    }

    // ---- expressions ----

    fn real_const(&mut self, v: f64) -> Value {
        if self.f32 {
            self.b.ins().f32const(v as f32)
        } else {
            self.b.ins().f64const(v)
        }
    }
    fn widen(&mut self, v: Value) -> Value {
        if self.f32 {
            self.b.ins().fpromote(types::F64, v)
        } else {
            v
        }
    }
    fn narrow(&mut self, v: Value) -> Value {
        if self.f32 {
            self.b.ins().fdemote(types::F32, v)
        } else {
            v
        }
    }
    fn as_real(&mut self, v: Value, ty: Ty) -> Value {
        match ty {
            Ty::Real => v,
            Ty::Int => self.b.ins().fcvt_from_sint(self.rt, v),
            Ty::Bool => {
                let w = self.b.ins().uextend(types::I32, v);
                self.b.ins().fcvt_from_sint(self.rt, w)
            }
        }
    }

    /// A node is cheap and safe enough to evaluate on both sides of a select.
    fn cheap(&self, e: ExprId, budget: &mut i32) -> bool {
        if self.lookup(e).is_some() {
            return true;
        }
        *budget -= 1;
        if *budget < 0 || !self.an.safe(e) {
            return false;
        }
        let ok = match self.p.pool.get(e) {
            Expr::Reduce(..) | Expr::Select(..) => false,
            Expr::Binary(Bin::Pow, _, _) => false,
            Expr::Call(f, _) => matches!(
                f,
                Func::Abs | Func::Min | Func::Max | Func::Clamp | Func::Floor | Func::Ceil
            ),
            _ => true,
        };
        if !ok {
            return false;
        }
        let mut all = true;
        self.p.pool.get(e).for_each_child(|c| {
            if all && !self.cheap(c, budget) {
                all = false
            }
        });
        all
    }

    fn emit(&mut self, e: ExprId) -> Result<Value> {
        if let Some(v) = self.lookup(e) {
            return Ok(v);
        }
        let v = self.emit_uncached(e)?;
        self.remember(e, v);
        Ok(v)
    }

    fn emit_uncached(&mut self, e: ExprId) -> Result<Value> {
        let p = self.p;
        let ty = p.pool.ty(e);
        if ty == Ty::Bool && !self.assumed.is_empty() {
            if let Some(v) = self.known(e) {
                return Ok(self.b.ins().iconst(types::I8, v as i64));
            }
        }
        Ok(match p.pool.get(e).clone() {
            Expr::Real(bits) => self.real_const(f64::from_bits(bits)),
            Expr::Int(v) => self.b.ins().iconst(types::I64, v),
            Expr::Bool(v) => self.b.ins().iconst(types::I8, v as i64),
            Expr::Index(i) => self.idx[i.ix()]
                .ok_or_else(|| internal(format!("index `{}` not bound", p.index_label(i))))?,
            Expr::Extent(i) => self.ext_at(i.ix()),
            Expr::Param(q) => self.params[q.ix()],
            Expr::Input(..) | Expr::Tensor(..) => self.load(e)?,
            Expr::StopGrad(a) => self.emit(a)?,
            Expr::Unary(op, a) => {
                let aty = p.pool.ty(a);
                let x = self.emit(a)?;
                match (op, aty) {
                    (Un::Neg, Ty::Real) => self.b.ins().fneg(x),
                    (Un::Neg, _) => self.b.ins().ineg(x),
                    (Un::Not, Ty::Bool) => self.b.ins().bxor_imm_s(x, 1),
                    (Un::Not, Ty::Int) => self.b.ins().icmp_imm_s(IntCC::Equal, x, 0),
                    (Un::Not, Ty::Real) => {
                        let z = self.real_const(0.0);
                        self.b.ins().fcmp(FloatCC::Equal, x, z)
                    }
                    (Un::ToReal, t) => self.as_real(x, t),
                    (Un::ToInt, Ty::Real) => self.b.ins().fcvt_to_sint_sat(types::I64, x),
                    (Un::ToInt, Ty::Bool) => self.b.ins().uextend(types::I64, x),
                    (Un::ToInt, Ty::Int) => x,
                }
            }
            Expr::Binary(op, a, b) => self.binary(e, op, a, b)?,
            Expr::Select(c, a, b) => {
                // (inside a loop over `n`, a mean's `N == 0` guard is known false)
                if let Some(v) = self.known(c) {
                    return self.emit(if v { a } else { b });
                }
                let cv = self.emit(c)?;
                let mut budget = 12;
                if self.cheap(a, &mut budget) && self.cheap(b, &mut budget) {
                    let x = self.emit(a)?;
                    let y = self.emit(b)?;
                    self.b.ins().select(cv, x, y)
                } else {
                    let vt = self.value_type(ty);
                    self.branch(cv, vt, a, b)?
                }
            }
            Expr::Call(f, args) => self.call(e, f, &args, ty)?,
            Expr::Reduce(red, i, body) => self.reduce(e, red, i, body, ty)?,
        })
    }

    fn value_type(&self, ty: Ty) -> Type {
        match ty {
            Ty::Real => self.rt,
            Ty::Int => types::I64,
            Ty::Bool => types::I8,
        }
    }

    /// `e` in a scope of its own (a lazily evaluated side: its values are not seen after).
    fn emit_scoped(&mut self, e: ExprId) -> Result<Value> {
        self.push();
        let v = self.emit(e);
        self.pop();
        v
    }

    /// Emits the safe nodes under `sides` that have other parents, before a branch to them: a
    /// side's scope is dropped after it, so a node two sides share (or that selects nested
    /// under them share: a folded gradient term, `if`s over aliases) would otherwise be
    /// emitted once per path, exponentially many times.
    fn before_branch(&mut self, sides: &[ExprId]) -> Result<()> {
        let reach = self.an.reach(sides);
        for (k, r) in reach.iter().enumerate() {
            let x = ExprId(k as u32);
            if *r && self.an.multi(x) && self.lookup(x).is_none() && self.speculable(x) {
                self.emit(x)?;
            }
        }
        Ok(())
    }

    /// `if c { a } else { b }` with branches; each side in its own scope.
    fn branch(&mut self, c: Value, vt: Type, a: ExprId, b: ExprId) -> Result<Value> {
        self.before_branch(&[a, b])?;
        let then_b = self.b.create_block();
        let else_b = self.b.create_block();
        let join = self.b.create_block();
        self.b.append_block_param(join, vt);
        self.b.ins().brif(c, then_b, &[], else_b, &[]);
        for (blk, side) in [(then_b, a), (else_b, b)] {
            self.b.switch_to_block(blk);
            let v = self.emit_scoped(side)?;
            self.b.ins().jump(join, &[BlockArg::Value(v)]);
        }
        self.b.switch_to_block(join);
        Ok(self.b.block_params(join)[0])
    }

    fn binary(&mut self, e: ExprId, op: Bin, a: ExprId, b: ExprId) -> Result<Value> {
        let p = self.p;
        let (ta, tb) = (p.pool.ty(a), p.pool.ty(b));
        if matches!(op, Bin::And | Bin::Or) {
            match self.known(a) {
                Some(v) if v == (op == Bin::And) => return self.emit(b),
                Some(v) => return Ok(self.b.ins().iconst(types::I8, v as i64)),
                None => {}
            }
            let x = self.emit(a)?;
            let mut budget = 12;
            if self.cheap(b, &mut budget) {
                let y = self.emit(b)?;
                return Ok(if op == Bin::And {
                    self.b.ins().band(x, y)
                } else {
                    self.b.ins().bor(x, y)
                });
            }
            self.before_branch(&[b])?;
            let t = self.b.ins().iconst(types::I8, 1);
            let f = self.b.ins().iconst(types::I8, 0);
            let then_b = self.b.create_block();
            let join = self.b.create_block();
            self.b.append_block_param(join, types::I8);
            if op == Bin::And {
                self.b
                    .ins()
                    .brif(x, then_b, &[], join, &[BlockArg::Value(f)]);
            } else {
                self.b
                    .ins()
                    .brif(x, join, &[BlockArg::Value(t)], then_b, &[]);
            }
            self.b.switch_to_block(then_b);
            let y = self.emit_scoped(b)?;
            self.b.ins().jump(join, &[BlockArg::Value(y)]);
            self.b.switch_to_block(join);
            return Ok(self.b.block_params(join)[0]);
        }
        // A real base with an int exponent: small constants multiply out (as powi does).
        if op == Bin::Pow && ta == Ty::Real && tb == Ty::Int {
            let x = self.emit(a)?;
            if let Expr::Int(k) = p.pool.get(b) {
                if (0..=4).contains(k) {
                    let mut r = self.real_const(1.0);
                    for i in 0..*k {
                        r = if i == 0 { x } else { self.b.ins().fmul(r, x) };
                    }
                    return Ok(r);
                }
            }
            let n = self.emit(b)?;
            let xd = self.widen(x);
            let r = self.host("lossc_powi", &[xd, n], types::F64)?;
            return Ok(self.narrow(r));
        }
        let x = self.emit(a)?;
        let y = self.emit(b)?;
        if ta == Ty::Int && tb == Ty::Int {
            return self.int_binary(e, op, x, y);
        }
        if ta == Ty::Bool && tb == Ty::Bool {
            let cc = if op == Bin::Eq {
                IntCC::Equal
            } else {
                IntCC::NotEqual
            };
            return Ok(self.b.ins().icmp(cc, x, y));
        }
        let x = self.as_real(x, ta);
        let y = self.as_real(y, tb);
        let ins = self.b.ins();
        Ok(match op {
            Bin::Add => ins.fadd(x, y),
            Bin::Sub => ins.fsub(x, y),
            Bin::Mul => ins.fmul(x, y),
            Bin::Div => ins.fdiv(x, y),
            Bin::Rem => {
                let q = ins.fdiv(x, y);
                let f = self.b.ins().floor(q);
                let m = self.b.ins().fmul(y, f);
                self.b.ins().fsub(x, m)
            }
            Bin::Pow => {
                let xd = self.widen(x);
                let yd = self.widen(y);
                let r = self.host("lossc_pow", &[xd, yd], types::F64)?;
                self.narrow(r)
            }
            Bin::Eq => ins.fcmp(FloatCC::Equal, x, y),
            Bin::Ne => ins.fcmp(FloatCC::NotEqual, x, y),
            Bin::Lt => ins.fcmp(FloatCC::LessThan, x, y),
            Bin::Le => ins.fcmp(FloatCC::LessThanOrEqual, x, y),
            Bin::Gt => ins.fcmp(FloatCC::GreaterThan, x, y),
            Bin::Ge => ins.fcmp(FloatCC::GreaterThanOrEqual, x, y),
            Bin::And | Bin::Or => return Err(internal("lazy operator")),
        })
    }

    fn int_binary(&mut self, e: ExprId, op: Bin, x: Value, y: Value) -> Result<Value> {
        Ok(match op {
            Bin::Add => self.b.ins().iadd(x, y),
            Bin::Sub => self.b.ins().isub(x, y),
            Bin::Mul => self.b.ins().imul(x, y),
            Bin::Div | Bin::Rem => {
                let zero = self.b.ins().icmp_imm_s(IntCC::Equal, y, 0);
                self.check(zero, ERR_DIV_ZERO, e, 0, y);
                // i64::MIN / -1 would trap: divide by 1 and negate instead (wrapping).
                let m1 = self.b.ins().icmp_imm_s(IntCC::Equal, y, -1);
                let one = self.b.ins().iconst(types::I64, 1);
                let d = self.b.ins().select(m1, one, y);
                let q0 = self.b.ins().sdiv(x, d);
                let neg = self.b.ins().ineg(x);
                let q = self.b.ins().select(m1, neg, q0);
                let r = self.b.ins().imul(q, y);
                let r = self.b.ins().isub(x, r);
                // Floor semantics: adjust when the remainder is nonzero and signs differ.
                let rz = self.b.ins().icmp_imm_s(IntCC::NotEqual, r, 0);
                let sx = self.b.ins().bxor(r, y);
                let diff = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, sx, 0);
                let adj = self.b.ins().band(rz, diff);
                if op == Bin::Div {
                    let q1 = self.b.ins().iadd_imm_s(q, -1);
                    self.b.ins().select(adj, q1, q)
                } else {
                    let r1 = self.b.ins().iadd(r, y);
                    self.b.ins().select(adj, r1, r)
                }
            }
            Bin::Pow => {
                let neg = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, y, 0);
                self.check(neg, ERR_NEG_POW, e, 0, y);
                self.host("lossc_ipow", &[x, y], types::I64)?
            }
            Bin::Eq => self.b.ins().icmp(IntCC::Equal, x, y),
            Bin::Ne => self.b.ins().icmp(IntCC::NotEqual, x, y),
            Bin::Lt => self.b.ins().icmp(IntCC::SignedLessThan, x, y),
            Bin::Le => self.b.ins().icmp(IntCC::SignedLessThanOrEqual, x, y),
            Bin::Gt => self.b.ins().icmp(IntCC::SignedGreaterThan, x, y),
            Bin::Ge => self.b.ins().icmp(IntCC::SignedGreaterThanOrEqual, x, y),
            Bin::And | Bin::Or => return Err(internal("lazy operator")),
        })
    }

    /// Calls a host function (imported by name).
    fn host(&mut self, name: &'static str, args: &[Value], ret: Type) -> Result<Value> {
        let fr = match self.funcs.get(name) {
            Some(f) => *f,
            None => {
                let mut sig = self.module.make_signature();
                for a in args {
                    let t = self.b.func.dfg.value_type(*a);
                    sig.params.push(AbiParam::new(t));
                }
                sig.returns.push(AbiParam::new(ret));
                let id = self
                    .module
                    .declare_function(name, Linkage::Import, &sig)
                    .map_err(|e| internal(e.to_string()))?;
                let fr = self.module.declare_func_in_func(id, self.b.func);
                self.funcs.insert(name, fr);
                fr
            }
        };
        let call = self.b.ins().call(fr, args);
        Ok(self.b.inst_results(call)[0])
    }

    /// An elementary function of a real.
    /// Scalar code calls libm (through f64): measured faster than the inline polynomials in
    /// scalar form, whose selects Cranelift lowers to branches. Vector code inlines them.
    fn math(&mut self, f: Func, x: Value) -> Result<Value> {
        if self.b.func.dfg.value_type(x).is_vector() {
            let m = math_fn(f).ok_or_else(|| internal(format!("no inline {}", f.name())))?;
            return Ok(self.vector_math(m, x));
        }
        if self.f32 {
            let name = host::name32(f).ok_or_else(|| internal(format!("no host {}", f.name())))?;
            return self.host(name, &[x], types::F32);
        }
        let name = host::name(f).ok_or_else(|| internal(format!("no host {}", f.name())))?;
        self.host(name, &[x], types::F64)
    }

    /// `exp(x)` of an `x` known to be `<= 0` or NaN: in vector code the inline form with one
    /// scaling step ([`math::MathFn::ExpNonPos`], the same bits); scalar code calls libm.
    fn exp_nonpos(&mut self, x: Value) -> Result<Value> {
        if self.b.func.dfg.value_type(x).is_vector() {
            return Ok(self.vector_math(math::MathFn::ExpNonPos, x));
        }
        self.math(Func::Exp, x)
    }

    /// Whether `d` is `a - m[..]` where `m` is a table whose cell is `max(c: a)` read at its
    /// own cell (the exponentials of a logsumexp or softmax, `exp(x - max)`): then `d <= 0`
    /// or NaN wherever it is evaluated (a's index `c` is bound to a cell of the maximum's row).
    fn nonpos_arg(&self, d: ExprId) -> bool {
        let p = self.p;
        let Expr::Binary(Bin::Sub, a, m) = p.pool.get(d) else {
            return false;
        };
        let Expr::Tensor(t, args) = p.pool.get(*m) else {
            return false;
        };
        let own = p.is_own_cell(*t, args);
        let t = &p.tensors[t.ix()];
        own && !t.recurrent
            && t.pad.is_none()
            && matches!(p.pool.get(t.body), Expr::Reduce(Red::Max, c, b)
                if b == a && p.pool.free(*a).contains(c))
    }

    /// In a step being interleaved, a store of `v` to the anchor slot: a side effect that
    /// pins where `v` is computed (see `vector::interleave`).
    fn pin(&mut self, v: Value) {
        if self.anchor {
            self.anchor_store(v);
        }
    }

    /// A store of `v` to the anchor slot, which fixes where `v` is computed.
    fn anchor_store(&mut self, v: Value) {
        let slot = self.anchor_slot();
        let st = math::pin_store(&mut self.b, slot, self.anchors.len() % ANCHORS, v);
        self.anchors.insert(st);
    }

    /// Inline `m(x)` on a vector, its result and intermediate results pinned while copies of a
    /// step are emitted to be interleaved.
    fn vector_math(&mut self, m: math::MathFn, x: Value) -> Value {
        let pin = self
            .anchor
            .then(|| (self.anchor_slot(), self.anchors.len(), ANCHORS));
        let (v, pinned) = math::emit_pinned(&mut self.b, m, x, pin);
        self.anchors.extend(pinned);
        self.pin(v);
        v
    }

    fn call(&mut self, e: ExprId, f: Func, args: &[ExprId], ty: Ty) -> Result<Value> {
        if let Some(v) = self.lse_share(e, None)? {
            return Ok(v);
        }
        let mut v = Vec::with_capacity(args.len());
        for a in args {
            let x = self.emit(*a)?;
            let t = self.p.pool.ty(*a);
            v.push(
                if ty == Ty::Real || matches!(f, Func::IsNan | Func::IsInf) {
                    self.as_real(x, t)
                } else {
                    x
                },
            );
        }
        if ty == Ty::Int {
            return Ok(match f {
                Func::Min => v.iter().skip(1).fold(v[0], |a, b| self.b.ins().smin(a, *b)),
                Func::Max => v.iter().skip(1).fold(v[0], |a, b| self.b.ins().smax(a, *b)),
                Func::Clamp => {
                    let lo = self.b.ins().smax(v[0], v[1]);
                    self.b.ins().smin(lo, v[2])
                }
                Func::Abs => self.b.ins().iabs(v[0]),
                Func::Sign => {
                    let pos = self.b.ins().icmp_imm_s(IntCC::SignedGreaterThan, v[0], 0);
                    let neg = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, v[0], 0);
                    let p = self.b.ins().uextend(types::I64, pos);
                    let n = self.b.ins().uextend(types::I64, neg);
                    self.b.ins().isub(p, n)
                }
                _ => v[0],
            });
        }
        let r = self.real_call(f, &v, args)?;
        if f == Func::LogSumExp {
            self.remember_lse_parts(e, false);
        }
        Ok(r)
    }

    /// Records the parts of logsumexp node `e` just emitted (see [`Gen::lse_share`]).
    pub(super) fn remember_lse_parts(&mut self, e: ExprId, vector: bool) {
        if let Some((ex, s, finite)) = self.lse_parts.take() {
            // (the tags of a logsumexp of many arguments would run into other tags)
            if ex.len() > LSE_PARTS {
                return;
            }
            let base = if vector { LSE_VECTOR } else { LSE_SCALAR };
            self.remember_key((base, e), s);
            self.remember_key((base + 1, e), finite);
            for (j, x) in ex.into_iter().enumerate() {
                self.remember_key((base + 2 + j as u8, e), x);
            }
        }
    }

    /// `exp(x_j - L)` for `L = logsumexp(.., x_j, ..)` computed in a scope still open: its
    /// `e_j * (1 / s)` (the exponential `exp(x_j - max)` and the sum `L` was computed from), a
    /// product instead of an exponential. Where the maximum is not finite, `x_j - L` is
    /// `-inf` (exp: 0) or NaN, which is what is returned then: the same as `exp(x_j - L)`.
    pub(super) fn lse_share(&mut self, e: ExprId, ix: Option<IndexId>) -> Result<Option<Value>> {
        let vector = ix.is_some();
        let Some((x, l, j)) = self.p.pool.lse_share(e).filter(|s| s.2 < LSE_PARTS) else {
            return Ok(None);
        };
        let base = if vector { LSE_VECTOR } else { LSE_SCALAR };
        let (Some(s), Some(finite), Some(ej)) = (
            self.lookup_key((base, l)),
            self.lookup_key((base + 1, l)),
            self.lookup_key((base + 2 + j as u8, l)),
        ) else {
            return Ok(None);
        };
        let (xv, lv) = match ix {
            Some(ix) => (self.emit_v(x, ix)?, self.emit_v(l, ix)?),
            None => (self.emit(x)?, self.emit(l)?),
        };
        // (one division per logsumexp, its shares products by the reciprocal: CTC's three
        // shares per cell made the divider its bottleneck, 2% of the kernel; one more
        // rounding, within an ulp of `e_j / s`)
        let r = match self.lookup_key((base + 2 + LSE_PARTS as u8, l)) {
            Some(r) => r,
            None => {
                let one = self.rc(s, 1.0);
                let r = self.b.ins().fdiv(one, s);
                self.remember_key((base + 2 + LSE_PARTS as u8, l), r);
                r
            }
        };
        let w = self.b.ins().fmul(ej, r);
        let dv = self.b.ins().fsub(xv, lv);
        let ninf = self.rc(dv, f64::NEG_INFINITY);
        let zero = self.rc(dv, 0.0);
        let gone = self.b.ins().fcmp(FloatCC::Equal, dv, ninf);
        let nan = self.rc(dv, f64::NAN);
        let other = self.sel(gone, zero, nan);
        Ok(Some(self.sel(finite, w, other)))
    }

    /// A built-in function of reals (scalars or vectors of one type; bool results are masks
    /// for vectors).
    fn real_call(&mut self, f: Func, v: &[Value], args: &[ExprId]) -> Result<Value> {
        let x = *v
            .first()
            .ok_or_else(|| internal("call without arguments"))?;
        Ok(match f {
            Func::IsNan => self.b.ins().fcmp(FloatCC::Unordered, x, x),
            Func::IsInf => {
                let a = self.fabs(x);
                let inf = self.rc(x, f64::INFINITY);
                self.b.ins().fcmp(FloatCC::Equal, a, inf)
            }
            Func::Sqrt => self.b.ins().sqrt(x),
            Func::Abs => self.fabs(x),
            Func::Floor => self.b.ins().floor(x),
            Func::Ceil => self.b.ins().ceil(x),
            Func::Sign => {
                let z = self.rc(x, 0.0);
                let one = self.rc(x, 1.0);
                let m1 = self.rc(x, -1.0);
                let pos = self.b.ins().fcmp(FloatCC::GreaterThan, x, z);
                let neg = self.b.ins().fcmp(FloatCC::LessThan, x, z);
                let s = self.sel(neg, m1, x);
                self.sel(pos, one, s)
            }
            Func::Min => v.iter().skip(1).fold(x, |a, b| self.min_max(false, a, *b)),
            Func::Max => v.iter().skip(1).fold(x, |a, b| self.min_max(true, a, *b)),
            Func::Clamp => {
                let lo = self.min_max(true, x, v[1]);
                self.min_max(false, lo, v[2])
            }
            Func::Sigmoid => self.sigmoid(x, args[0])?,
            Func::Softplus => self.softplus(x, args[0])?,
            Func::LogSigmoid => {
                let n = self.fneg(x);
                let s = self.softplus(n, args[0])?;
                self.fneg(s)
            }
            Func::LogSumExp => self.logsumexp_of(v)?,
            Func::Xlogy => {
                let y = v[1];
                let l = self.math(Func::Log, y)?;
                let prod = self.b.ins().fmul(x, l);
                let z = self.rc(x, 0.0);
                let xz = self.b.ins().fcmp(FloatCC::Equal, x, z);
                let yok = self.b.ins().fcmp(FloatCC::Ordered, y, y);
                let both = self.b.ins().band(xz, yok);
                self.sel(both, z, prod)
            }
            Func::Exp if self.nonpos_arg(args[0]) => self.exp_nonpos(x)?,
            Func::Exp
            | Func::Log
            | Func::Log1p
            | Func::Expm1
            | Func::Tanh
            | Func::Sin
            | Func::Cos
            | Func::Atan
            | Func::Acos => self.math(f, x)?,
        })
    }

    /// `-x`. For vectors an xor with the sign mask, a constant hoisted out of the loop:
    /// Cranelift lowers a vector `fneg` by rebuilding the mask at every use (three
    /// instructions where one does).
    fn fneg(&mut self, x: Value) -> Value {
        if self.b.func.dfg.value_type(x).is_vector() {
            let m = self.rc(x, -0.0);
            self.b.ins().bxor(x, m)
        } else {
            self.b.ins().fneg(x)
        }
    }

    /// `|x|`, for vectors by clearing the sign bit with a hoisted mask (see [`Gen::fneg`]).
    fn fabs(&mut self, x: Value) -> Value {
        if self.b.func.dfg.value_type(x).is_vector() {
            let m = self.rc(x, -0.0);
            self.b.ins().band_not(x, m)
        } else {
            self.b.ins().fabs(x)
        }
    }

    /// A real constant of the type of `like` (splat for vectors).
    fn rc(&mut self, like: Value, v: f64) -> Value {
        let ty = self.b.func.dfg.value_type(like);
        if ty.is_vector() {
            let s = if ty.lane_type() == types::F32 {
                self.b.ins().f32const(v as f32)
            } else {
                self.b.ins().f64const(v)
            };
            self.b.ins().splat(ty, s)
        } else {
            self.real_const(v)
        }
    }

    /// `max(a, b)` (`max`) or `min(a, b)` as the interpreter defines them: NaN if either is
    /// NaN, else `b` if it is strictly greater (smaller), else `a` (a tie, ±0 included, keeps
    /// `a`). `b`'s NaN is first taken into `a` (a select the min and the max of one pair
    /// share; none when `b` is a constant other than NaN: a clamp's bounds); then the strict
    /// compare-and-select is one maxps/minps (`b > a ? b : a`, which keeps a NaN `a`): at
    /// most three instructions per vector where Cranelift's `fmax`/`fmin` (IEEE signed
    /// zeros) take eight.
    fn min_max(&mut self, max: bool, a: Value, b: Value) -> Value {
        let a = if is_number_const(self.b.func, b) {
            a
        } else {
            let nan = self.b.ins().fcmp(FloatCC::Unordered, b, b);
            self.sel(nan, b, a)
        };
        let take = if max {
            self.b.ins().fcmp(FloatCC::LessThan, a, b)
        } else {
            self.b.ins().fcmp(FloatCC::LessThan, b, a)
        };
        self.sel(take, b, a)
    }

    /// `if c { a } else { b }` on values: `select` for scalars, a bit select on lane masks.
    fn sel(&mut self, c: Value, a: Value, b: Value) -> Value {
        let ty = self.b.func.dfg.value_type(a);
        if ty.is_vector() {
            let m = if self.b.func.dfg.value_type(c) == ty {
                c
            } else {
                let le =
                    MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
                self.b.ins().bitcast(ty, le, c)
            };
            // A lane mask is all ones or all zeros: selecting against +0.0 (all bits zero) is
            // one `and` (or `andnot`) where a bit select takes three instructions; but not
            // `a < b ? a : b`-like selects, which are one minps/maxps.
            if is_min_max(self.b.func, c, a, b) {
                return self.b.ins().bitselect(m, a, b);
            }
            if is_zero_splat(self.b.func, b) {
                return self.b.ins().band(m, a);
            }
            if is_zero_splat(self.b.func, a) {
                return self.b.ins().band_not(b, m);
            }
            self.b.ins().bitselect(m, a, b)
        } else {
            self.b.ins().select(c, a, b)
        }
    }

    /// e^-|x| for the value `x` of node `node` (or of its negation), computed once per scope.
    fn exp_neg_abs(&mut self, x: Value, node: ExprId) -> Result<Value> {
        let base = match self.p.pool.get(node) {
            Expr::Unary(Un::Neg, y) => *y,
            _ => node,
        };
        // (vector values under their own keys)
        let tag = if self.b.func.dfg.value_type(x).is_vector() {
            9
        } else {
            1
        };
        if let Some(v) = self.lookup_key((tag, base)) {
            return Ok(v);
        }
        let na = if self.b.func.dfg.value_type(x).is_vector() {
            // (-|x| as one or with the sign mask)
            let m = self.rc(x, -0.0);
            self.b.ins().bor(x, m)
        } else {
            let a = self.b.ins().fabs(x);
            self.b.ins().fneg(a)
        };
        let e = self.exp_nonpos(na)?;
        self.remember_key((tag, base), e);
        Ok(e)
    }

    /// 1 / (1 + e^-|x|), mirrored for negative x (no overflow, no cancellation): `r` for
    /// x >= 0, `e r` below. `r` and `e r` are kept per scope for the node or its negation, so
    /// a loss holding both `sigmoid(x)` and `sigmoid(-x)` (focal's p and 1 - p) divides once.
    fn sigmoid(&mut self, x: Value, node: ExprId) -> Result<Value> {
        let e = self.exp_neg_abs(x, node)?;
        let base = match self.p.pool.get(node) {
            Expr::Unary(Un::Neg, y) => *y,
            _ => node,
        };
        let vector = self.b.func.dfg.value_type(x).is_vector();
        let (tr, ter) = if vector { (13, 14) } else { (5, 6) };
        let (r, er) = match (self.lookup_key((tr, base)), self.lookup_key((ter, base))) {
            (Some(r), Some(er)) => (r, er),
            _ => {
                let one = self.rc(x, 1.0);
                let d = self.b.ins().fadd(one, e);
                let r = self.b.ins().fdiv(one, d);
                let er = self.b.ins().fmul(e, r);
                if vector {
                    self.pin(r);
                }
                self.remember_key((tr, base), r);
                self.remember_key((ter, base), er);
                (r, er)
            }
        };
        let z = self.rc(x, 0.0);
        // sigmoid(-y): `-y >= 0` is `y <= 0` (±0 and NaN too), so the negation need not be
        // computed for the test alone
        let of_neg = (base != node)
            .then(|| self.lookup_key((if vector { 3 } else { 0 }, base)))
            .flatten();
        let pos = match of_neg {
            Some(y) => self.b.ins().fcmp(FloatCC::LessThanOrEqual, y, z),
            None => self.b.ins().fcmp(FloatCC::GreaterThanOrEqual, x, z),
        };
        Ok(self.sel(pos, r, er))
    }

    /// max(x, 0) + log1p(e^-|x|).
    fn softplus(&mut self, x: Value, node: ExprId) -> Result<Value> {
        // max(x, 0) as `0 < x ? x : 0` (one maxps; a NaN x still gives NaN through the log1p
        // term), not fmax, whose NaN and signed-zero rules cost about eight instructions
        let z = self.rc(x, 0.0);
        let pos = self.b.ins().fcmp(FloatCC::LessThan, z, x);
        let m = self.sel(pos, x, z);
        let e = self.exp_neg_abs(x, node)?;
        let base = match self.p.pool.get(node) {
            Expr::Unary(Un::Neg, y) => *y,
            _ => node,
        };
        let tag = if self.b.func.dfg.value_type(x).is_vector() {
            10
        } else {
            2
        };
        let l = match self.lookup_key((tag, base)) {
            Some(l) => l,
            // (`e` is in [0, 1], or NaN: the vector code needs no general log1p)
            None if tag == 10 => {
                let l = self.vector_math(math::MathFn::Log1pUnit, e);
                self.remember_key((tag, base), l);
                l
            }
            None => {
                let l = self.math(Func::Log1p, e)?;
                self.remember_key((tag, base), l);
                l
            }
        };
        Ok(self.b.ins().fadd(m, l))
    }

    /// logsumexp of a few values: m + log(sum e^(v - m)), or m when m is not finite.
    fn logsumexp_of(&mut self, v: &[Value]) -> Result<Value> {
        // The maximum as `b > a ? b : a` (one maxps; fmax's NaN and signed-zero rules take about
        // eight instructions): a NaN argument is then skipped by the maximum but still makes
        // the sum NaN; where the maximum is not finite the result is the maximum, or NaN when
        // an argument is (below).
        let m = v.iter().skip(1).fold(v[0], |a, b| {
            let take = self.b.ins().fcmp(FloatCC::LessThan, a, *b);
            self.sel(take, *b, a)
        });
        let mut nan: Option<Value> = None;
        for pair in v.chunks(2) {
            let u = self
                .b
                .ins()
                .fcmp(FloatCC::Unordered, pair[0], pair[pair.len() - 1]);
            nan = Some(match nan {
                Some(x) => self.b.ins().bor(x, u),
                None => u,
            });
        }
        let mut s: Option<Value> = None;
        let mut ex = Vec::with_capacity(v.len());
        for x in v {
            let d = self.b.ins().fsub(*x, m);
            let t = self.exp_nonpos(d)?;
            ex.push(t);
            s = Some(match s {
                Some(a) => self.b.ins().fadd(a, t),
                None => t,
            });
        }
        let s = s.ok_or_else(|| internal("empty logsumexp"))?;
        let nan = nan.ok_or_else(|| internal("empty logsumexp"))?;
        let inf = self.rc(m, f64::INFINITY);
        let am = self.b.ins().fabs(m);
        let finite = self.b.ins().fcmp(FloatCC::LessThan, am, inf);
        self.lse_parts = Some((ex, s, finite));
        if !self.b.func.dfg.value_type(s).is_vector() {
            let l = self.math(Func::Log, s)?;
            let r = self.b.ins().fadd(m, l);
            // (r is NaN wherever an argument is)
            let use_r = self.b.ins().bor(finite, nan);
            return Ok(self.sel(use_r, r, m));
        }
        // Where m is finite and no argument NaN, one term is exp(0) = 1 and the others are in
        // [0, 1]: s is in [1, n], where the log needs no special values
        // (`MathFn::LogNormal`, the same bits). Elsewhere s is NaN (an argument is) or unused.
        let l = self.vector_math(math::MathFn::LogNormal, s);
        let r = self.b.ins().fadd(m, l);
        let r = self.sel(finite, r, m);
        Ok(self.sel(nan, s, r))
    }

    /// A real reduction whose body is lane-wise: a vector loop, then the remaining cells.
    fn vreduce(&mut self, e: ExprId, red: Red, i: IndexId, body: ExprId) -> Result<Value> {
        let n = self.ext_at(i.ix());
        // One carried accumulator: f64 sums, real max/min; logsumexp is max then sum of exps.
        let pass = |g: &mut Self, red: Red, shift: Option<Value>| -> Result<Value> {
            let (ty, init) = match red {
                Red::Max => (g.rt, g.real_const(f64::NEG_INFINITY)),
                Red::Min => (g.rt, g.real_const(f64::INFINITY)),
                _ => (types::F64, g.b.ins().f64const(0.0)),
            };
            let var = g.b.declare_var(ty);
            g.b.def_var(var, init);
            let c = Carried {
                node: e,
                red,
                body,
                var,
                shift,
            };
            let start = g.vector_loop(&VecWork::Nothing, std::slice::from_ref(&c), i)?;
            g.for_each_from(i, Some(start), false, &mut |g: &mut Self| {
                let v = g.emit(body)?;
                let v = match shift {
                    Some(m) => {
                        let d = g.b.ins().fsub(v, m);
                        g.exp_nonpos(d)?
                    }
                    None => v,
                };
                let a = g.b.use_var(var);
                let r = match red {
                    Red::Max => g.b.ins().fmax(a, v),
                    Red::Min => g.b.ins().fmin(a, v),
                    _ => {
                        let v = g.widen(v);
                        g.b.ins().fadd(a, v)
                    }
                };
                g.b.def_var(var, r);
                Ok(())
            })?;
            Ok(g.b.use_var(var))
        };
        match red {
            Red::Sum => {
                let s = pass(self, Red::Sum, None)?;
                Ok(self.narrow(s))
            }
            Red::Mean => {
                let s = pass(self, Red::Sum, None)?;
                let nf = self.b.ins().fcvt_from_sint(types::F64, n);
                let m = self.b.ins().fdiv(s, nf);
                Ok(self.narrow(m))
            }
            Red::Max | Red::Min => pass(self, red, None),
            Red::LogSumExp => {
                let m = pass(self, Red::Max, None)?;
                let s = pass(self, Red::Sum, Some(m))?;
                let s = self.narrow(s);
                let l = self.math(Func::Log, s)?;
                let r = self.b.ins().fadd(m, l);
                let inf = self.real_const(f64::INFINITY);
                let am = self.b.ins().fabs(m);
                let finite = self.b.ins().fcmp(FloatCC::LessThan, am, inf);
                Ok(self.b.ins().select(finite, r, m))
            }
        }
    }

    fn reduce(&mut self, e: ExprId, red: Red, i: IndexId, body: ExprId, ty: Ty) -> Result<Value> {
        // Reductions in the body that do not depend on `i` are computed once, before the loop.
        self.hoist(&[(body, When::Always)], None, &[i])?;
        let n = self.ext_at(i.ix());
        if ty == Ty::Int {
            let (init, empty_err) = match red {
                Red::Max => (i64::MIN, true),
                Red::Min => (i64::MAX, true),
                _ => (0, false),
            };
            if empty_err {
                let empty = self.b.ins().icmp_imm_s(IntCC::SignedLessThanOrEqual, n, 0);
                self.check(empty, ERR_EMPTY, e, 0, n);
            }
            let var = self.b.declare_var(types::I64);
            let init = self.b.ins().iconst(types::I64, init);
            self.b.def_var(var, init);
            self.for_each(i, false, &mut |g: &mut Self| {
                let v = g.emit(body)?;
                let a = g.b.use_var(var);
                let r = match red {
                    Red::Max => g.b.ins().smax(a, v),
                    Red::Min => g.b.ins().smin(a, v),
                    _ => g.b.ins().iadd(a, v),
                };
                g.b.def_var(var, r);
                Ok(())
            })?;
            return Ok(self.b.use_var(var));
        }
        let probe = Carried {
            node: e,
            red,
            body,
            var: Variable::from_u32(0),
            shift: None,
        };
        if self.can_vectorize(&VecWork::Nothing, std::slice::from_ref(&probe), i, false)
            == Some(false)
        {
            return self.vreduce(e, red, i, body);
        }
        match red {
            Red::Sum | Red::Mean => {
                let var = self.b.declare_var(types::F64);
                let z = self.b.ins().f64const(0.0);
                self.b.def_var(var, z);
                self.for_each(i, false, &mut |g: &mut Self| {
                    let v = g.emit(body)?;
                    let v = g.widen(v);
                    let a = g.b.use_var(var);
                    let r = g.b.ins().fadd(a, v);
                    g.b.def_var(var, r);
                    Ok(())
                })?;
                let s = self.b.use_var(var);
                let s = if red == Red::Mean {
                    let nf = self.b.ins().fcvt_from_sint(types::F64, n);
                    self.b.ins().fdiv(s, nf)
                } else {
                    s
                };
                Ok(self.narrow(s))
            }
            Red::Max | Red::Min => {
                let var = self.b.declare_var(self.rt);
                let init = self.real_const(if red == Red::Max {
                    f64::NEG_INFINITY
                } else {
                    f64::INFINITY
                });
                self.b.def_var(var, init);
                self.for_each(i, false, &mut |g: &mut Self| {
                    let v = g.emit(body)?;
                    let a = g.b.use_var(var);
                    let r = if red == Red::Max {
                        g.b.ins().fmax(a, v)
                    } else {
                        g.b.ins().fmin(a, v)
                    };
                    g.b.def_var(var, r);
                    Ok(())
                })?;
                Ok(self.b.use_var(var))
            }
            Red::LogSumExp => {
                // Two passes: the maximum, then the sum of e^(v - max) in f64.
                let mv = self.b.declare_var(self.rt);
                let init = self.real_const(f64::NEG_INFINITY);
                self.b.def_var(mv, init);
                self.for_each(i, false, &mut |g: &mut Self| {
                    let v = g.emit(body)?;
                    let a = g.b.use_var(mv);
                    let r = g.b.ins().fmax(a, v);
                    g.b.def_var(mv, r);
                    Ok(())
                })?;
                let m = self.b.use_var(mv);
                let sv = self.b.declare_var(types::F64);
                let z = self.b.ins().f64const(0.0);
                self.b.def_var(sv, z);
                self.for_each(i, false, &mut |g: &mut Self| {
                    let v = g.emit(body)?;
                    let d = g.b.ins().fsub(v, m);
                    let t = g.exp_nonpos(d)?;
                    let t = g.widen(t);
                    let a = g.b.use_var(sv);
                    let r = g.b.ins().fadd(a, t);
                    g.b.def_var(sv, r);
                    Ok(())
                })?;
                let s = self.b.use_var(sv);
                let s = self.narrow(s);
                let l = self.math(Func::Log, s)?;
                let r = self.b.ins().fadd(m, l);
                let inf = self.real_const(f64::INFINITY);
                let am = self.b.ins().fabs(m);
                let finite = self.b.ins().fcmp(FloatCC::LessThan, am, inf);
                Ok(self.b.ins().select(finite, r, m))
            }
        }
    }
}

/// The inline elementary function for a built-in.
fn math_fn(f: Func) -> Option<math::MathFn> {
    use math::MathFn as M;
    Some(match f {
        Func::Exp => M::Exp,
        Func::Log => M::Log,
        Func::Log1p => M::Log1p,
        Func::Expm1 => M::Expm1,
        Func::Tanh => M::Tanh,
        Func::Sin => M::Sin,
        Func::Cos => M::Cos,
        Func::Atan => M::Atan,
        Func::Acos => M::Acos,
        _ => return None,
    })
}

/// Unused by the emitter, kept for the host: the tensor slot of a gradient.
pub fn tensor_slot(p: &Program, t: TensorId) -> usize {
    p.inputs.len() + t.ix()
}

/// A fill of the real table `t[.., c]` whose body holds no reduction, followed by a fill of
/// the real `s[..]` (`t`'s indices but the last) that reads `t` only in one sum over its own
/// row (`node`, `sum(c: t[.., c])`): the two run as one pass ([`Gen::fill_with_sum`]).
struct SummedFill<'s> {
    t: TensorId,
    indices: &'s [IndexId],
    body: ExprId,
    s: TensorId,
    s_body: ExprId,
    node: ExprId,
}

fn summed_fill<'s>(p: &Program, fill: &'s Stage, then: &Stage) -> Option<SummedFill<'s>> {
    let (
        Stage::Fill {
            tensor: Some(t),
            indices,
            body,
            reverse: false,
            also: a1,
        },
        Stage::Fill {
            tensor: Some(s),
            indices: outer,
            body: s_body,
            reverse: false,
            also: a2,
        },
    ) = (fill, then)
    else {
        return None;
    };
    if !a1.is_empty() || !a2.is_empty() {
        return None;
    }
    let (&c, lead) = indices.split_last()?;
    let real = |x: TensorId| p.tensors[x.ix()].ty == Ty::Real;
    if lead != outer.as_slice() || !real(*t) || !real(*s) || t == s {
        return None;
    }
    if p.pool
        .reaches(&[*body], |_, x| matches!(x, Expr::Reduce(..)))
    {
        return None;
    }
    let found = std::cell::Cell::new(None);
    let other = std::cell::Cell::new(false);
    p.pool.reaches(&[*s_body], |e, x| {
        match x {
            Expr::Reduce(Red::Sum, i, r)
                if *i == c
                    && found.get().is_none()
                    && matches!(p.pool.get(*r), Expr::Tensor(u, a) if u == t && p.is_own_cell(*t, a)) =>
            {
                found.set(Some(e))
            }
            Expr::Reduce(..) => other.set(true),
            // (t read at another cell: not fused)
            Expr::Tensor(u, a) if u == t && !p.is_own_cell(*t, a) => other.set(true),
            _ => {}
        }
        false
    });
    let node = found.get().filter(|_| !other.get())?;
    Some(SummedFill {
        t: *t,
        indices,
        body: *body,
        s: *s,
        s_body: *s_body,
        node,
    })
}

/// Every node a stage evaluates from: a fill's body; a pass's guards, target cells, values
/// and carried reductions.
fn stage_roots(st: &Stage) -> Vec<ExprId> {
    match st {
        Stage::Zero(_) => Vec::new(),
        Stage::Fill { body, also, .. } => std::iter::once(*body)
            .chain(also.iter().map(|(_, e)| *e))
            .collect(),
        Stage::Scatter { groups, .. } => groups
            .iter()
            .flat_map(|g| {
                g.runs
                    .iter()
                    .flat_map(|r| r.terms.iter().flat_map(crate::schedule::contribution_roots))
                    .chain(g.carried.iter().flatten().copied())
            })
            .collect(),
    }
}

/// A scalar constant, or the scalar constant a vector splats.
#[derive(Clone, Copy)]
enum Const {
    F32(f32),
    F64(f64),
    Int(i64),
}

/// The constant `v` is (`f32const`, `f64const`, `iconst`, or a `splat` of one), if it is one.
fn splat_const(f: &cranelift_codegen::ir::Function, v: Value) -> Option<Const> {
    use cranelift_codegen::ir::{InstructionData, Opcode, ValueDef};
    let ValueDef::Result(inst, _) = f.dfg.value_def(v) else {
        return None;
    };
    match f.dfg.insts[inst] {
        InstructionData::Unary {
            opcode: Opcode::Splat,
            arg,
        } => splat_const(f, arg),
        InstructionData::UnaryIeee32 { imm, .. } => Some(Const::F32(f32::from_bits(imm.bits()))),
        InstructionData::UnaryIeee64 { imm, .. } => Some(Const::F64(f64::from_bits(imm.bits()))),
        InstructionData::UnaryImm { imm, .. } => Some(Const::Int(imm.bits())),
        _ => None,
    }
}

/// Whether `v` is a float constant (or a splat of one) other than NaN.
fn is_number_const(f: &cranelift_codegen::ir::Function, v: Value) -> bool {
    match splat_const(f, v) {
        Some(Const::F32(x)) => !x.is_nan(),
        Some(Const::F64(x)) => !x.is_nan(),
        _ => false,
    }
}

/// Whether `v` is a vector of all-zero bits (+0.0 or 0 in every lane) made by `splat` or
/// `vconst`.
fn is_zero_splat(f: &cranelift_codegen::ir::Function, v: Value) -> bool {
    use cranelift_codegen::ir::{InstructionData, ValueDef};
    let zero = match splat_const(f, v) {
        Some(Const::F32(x)) => x.to_bits() == 0,
        Some(Const::F64(x)) => x.to_bits() == 0,
        Some(Const::Int(x)) => x == 0,
        None => false,
    };
    if f.dfg.value_type(v).is_vector() && zero {
        return true;
    }
    match f.dfg.value_def(v) {
        ValueDef::Result(inst, _) => match f.dfg.insts[inst] {
            InstructionData::UnaryConst {
                constant_handle, ..
            } => f
                .dfg
                .constants
                .get(constant_handle)
                .as_slice()
                .iter()
                .all(|b| *b == 0),
            _ => false,
        },
        _ => false,
    }
}

/// Whether `c` compares `a` and `b` with `<` (a select between them on `c` is a min or max).
fn is_min_max(f: &cranelift_codegen::ir::Function, c: Value, a: Value, b: Value) -> bool {
    use cranelift_codegen::ir::{InstructionData, Opcode, ValueDef};
    let ValueDef::Result(inst, _) = f.dfg.value_def(c) else {
        return false;
    };
    match f.dfg.insts[inst] {
        InstructionData::FloatCompare {
            opcode: Opcode::Fcmp,
            cond: FloatCC::LessThan,
            args: [x, y],
        } => (x == a && y == b) || (x == b && y == a),
        _ => false,
    }
}

/// `x` when a run's term `value` is `-x`: a term after the first is then subtracted (`a + -x`
/// is `a - x`, and `a - (m ? x : 0)` is `m ? a - x : a`, the term skipped, bit for bit), in
/// scalar and vector code alike so that both give the same bits.
pub(crate) fn later_negation(p: &Program, value: ExprId) -> Option<ExprId> {
    match p.pool.get(value) {
        Expr::Unary(Un::Neg, x) => Some(*x),
        _ => None,
    }
}
