#!/usr/bin/env python3
"""Compare lossc against JAX and PyTorch on a few stdlib losses, single-threaded, f32.

For each benchmark it times value + gradient (reduction mean) with
  * JAX:     jax.jit(jax.value_and_grad(f)): the first call (trace + compile + run) and the
             median of --repeat calls after warm-up, with block_until_ready;
  * PyTorch: eager forward + torch.autograd.grad, median of --repeat calls after warm-up;
  * lossc:   `lossc bench LOSS --dims ... --dtype f32 --grad INPUT --threads 1 --json`, which
             prints one JSON object with `median_s` and `compile_s` (a row shows n/a if that
             command fails or does not exist).
Everything runs on one core: the process (and so the lossc child) is pinned with
sched_setaffinity before JAX or torch is imported, XLA gets
`--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`, torch gets
set_num_threads(1).

Before timing, at a small size, it checks that the JAX reference agrees with PyTorch (value
and gradient), and, if `lossc eval` works, that lossc agrees with JAX.

Optional tool, not run in CI. Needs numpy; JAX (+ optax for ctc_loss) and torch are each used
when importable and skipped otherwise. torchvision is used for focal/GIoU when importable, else
a line-for-line copy of its code. See bench/README.md.
"""

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ALPHA, GAMMA, GIOU_EPS = 0.25, 2, 1e-7


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", default=[],
                    help="run only this benchmark (repeatable, or comma-separated)")
    ap.add_argument("--repeat", type=int, default=10,
                    help="timed calls per framework after warm-up (default 10); the median is reported")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (default 2)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="time JAX and lossc alternately this many times and report the median "
                         "of the per-round ratios with their range (default 1): the host's load "
                         "drifts, and a ratio of two timings taken side by side drifts less")
    ap.add_argument("--json", action="store_true", help="print one machine-readable JSON document")
    ap.add_argument("--lossc", default=None,
                    help="lossc binary (default: target/release/lossc under the repo root)")
    ap.add_argument("--cpu", type=int, default=None,
                    help="core to pin to (default: the last core this process may use)")
    ap.add_argument("--eval-backend", default=None,
                    help="pass --backend NAME to `lossc eval` in the agreement checks (e.g. jit)")
    ap.add_argument("--no-check", action="store_true", help="skip the small-size agreement checks")
    ap.add_argument("--no-time", action="store_true", help="only run the agreement checks")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args()


def pin_one_thread(cpu):
    """Pin to one core and ask every runtime for one thread. Must run before jax/torch import."""
    allowed = sorted(os.sched_getaffinity(0))
    if cpu is None:
        cpu = allowed[-1]
    os.sched_setaffinity(0, {cpu})
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false "
                               "intra_op_parallelism_threads=1").strip()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    return cpu


# --------------------------------------------------------------------------- frameworks

def import_jax():
    try:
        import jax
        import jax.numpy as jnp
        jax.config.update("jax_platforms", "cpu")
        jnp.zeros(1).block_until_ready()  # backend start-up, kept out of "first call"
        return jax
    except Exception as e:  # noqa: BLE001
        print(f"note: JAX unavailable ({e}); skipping JAX", file=sys.stderr)
        return None


def import_torch():
    try:
        import torch
        torch.set_num_threads(1)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
        return torch
    except Exception as e:  # noqa: BLE001
        print(f"note: PyTorch unavailable ({e}); skipping PyTorch", file=sys.stderr)
        return None


def import_torchvision_ops():
    try:
        from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss
        return sigmoid_focal_loss, generalized_box_iou_loss
    except Exception:  # noqa: BLE001
        return None


# --------------------------------------------------------------------------- benchmarks
# Each benchmark: lossc name, input names in lossc's order (with numpy dtypes), the input to
# differentiate, the full and the small sizes, an input generator, and JAX/torch definitions
# taking the inputs in that order and returning the mean-reduced scalar.

def gen_mse(rng, d):
    import numpy as np
    n = d["n"]
    return [rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32)]


def gen_focal(rng, d):
    import numpy as np
    n = d["n"]
    labels = (rng.random(n) < 0.3).astype(np.float32)
    logits = (2.0 * rng.standard_normal(n)).astype(np.float32)
    return [labels, logits]


def gen_softmax(rng, d):
    import numpy as np
    n, c = d["n"], d["c"]
    labels = np.zeros((n, c), np.float32)
    labels[np.arange(n), rng.integers(0, c, n)] = 1.0
    logits = (2.0 * rng.standard_normal((n, c))).astype(np.float32)
    return [labels, logits]


def gen_giou(rng, d):
    import numpy as np
    n = d["n"]

    def boxes(x1, y1):
        w = rng.uniform(0.05, 0.5, n)
        h = rng.uniform(0.05, 0.5, n)
        return np.stack([x1, y1, x1 + w, y1 + h], axis=1).astype(np.float32)

    x1, y1 = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    pred = boxes(x1, y1)
    # targets near the predictions: most pairs overlap, some do not
    target = boxes(x1 + rng.uniform(-0.3, 0.3, n), y1 + rng.uniform(-0.3, 0.3, n))
    return [pred, target]


def gen_ctc(rng, d):
    import numpy as np
    b, t, k, s = d["b"], d["t"], d["k"], d["s"]
    labels = rng.integers(1, k, (b, s)).astype(np.int64)  # 1..k-1, blank is 0
    logits = rng.standard_normal((b, t, k), dtype=np.float32)
    return [labels, logits, np.full(b, s, np.int64), np.full(b, t, np.int64)]


def jax_mse(labels, predictions):
    import jax.numpy as jnp
    return jnp.mean((predictions - labels) ** 2)


def jax_focal(labels, logits):
    # torchvision.ops.sigmoid_focal_loss, reduction mean
    import jax
    import jax.numpy as jnp
    p = jax.nn.sigmoid(logits)
    ce = jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    p_t = p * labels + (1 - p) * (1 - labels)
    loss = ce * (1 - p_t) ** GAMMA
    alpha_t = ALPHA * labels + (1 - ALPHA) * (1 - labels)
    return jnp.mean(alpha_t * loss)


def jax_softmax(labels, logits):
    import jax
    import jax.numpy as jnp
    return jnp.mean(-jnp.sum(labels * jax.nn.log_softmax(logits, axis=-1), axis=-1))


def jax_giou(pred_boxes, target_boxes):
    # torchvision.ops.generalized_box_iou_loss, reduction mean
    import jax.numpy as jnp
    x1, y1, x2, y2 = (pred_boxes[:, i] for i in range(4))
    x1g, y1g, x2g, y2g = (target_boxes[:, i] for i in range(4))
    xk1, yk1 = jnp.maximum(x1, x1g), jnp.maximum(y1, y1g)
    xk2, yk2 = jnp.minimum(x2, x2g), jnp.minimum(y2, y2g)
    mask = (yk2 > yk1) & (xk2 > xk1)
    inter = jnp.where(mask, (xk2 - xk1) * (yk2 - yk1), 0.0)
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    iou = inter / (union + GIOU_EPS)
    xc1, yc1 = jnp.minimum(x1, x1g), jnp.minimum(y1, y1g)
    xc2, yc2 = jnp.maximum(x2, x2g), jnp.maximum(y2, y2g)
    area_c = (xc2 - xc1) * (yc2 - yc1)
    return jnp.mean(1 - (iou - (area_c - union) / (area_c + GIOU_EPS)))


def jax_ctc(labels, logits, label_lengths, logit_lengths):
    # optax.ctc_loss (log_softmax inside) per sequence; lossc's `mean` = mean over the batch
    import jax.numpy as jnp
    import optax
    b, t, _ = logits.shape
    s = labels.shape[1]
    logit_pad = (jnp.arange(t)[None, :] >= logit_lengths[:, None]).astype(logits.dtype)
    label_pad = (jnp.arange(s)[None, :] >= label_lengths[:, None]).astype(logits.dtype)
    return jnp.mean(optax.ctc_loss(logits, logit_pad, labels, label_pad, blank_id=0))


def torch_mse(labels, predictions):
    import torch.nn.functional as F
    return F.mse_loss(predictions, labels, reduction="mean")


def torch_focal(labels, logits):
    tv = TORCHVISION_OPS
    if tv is not None:
        return tv[0](logits, labels, alpha=ALPHA, gamma=GAMMA, reduction="mean")
    # copy of torchvision.ops.sigmoid_focal_loss
    import torch
    import torch.nn.functional as F
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    p_t = p * labels + (1 - p) * (1 - labels)
    loss = ce * ((1 - p_t) ** GAMMA)
    alpha_t = ALPHA * labels + (1 - ALPHA) * (1 - labels)
    return (alpha_t * loss).mean()


def torch_giou(pred_boxes, target_boxes):
    tv = TORCHVISION_OPS
    if tv is not None:
        return tv[1](pred_boxes, target_boxes, reduction="mean", eps=GIOU_EPS)
    # copy of torchvision.ops.generalized_box_iou_loss (and its _loss_inter_union)
    import torch
    x1, y1, x2, y2 = pred_boxes.unbind(dim=-1)
    x1g, y1g, x2g, y2g = target_boxes.unbind(dim=-1)
    xkis1, ykis1 = torch.max(x1, x1g), torch.max(y1, y1g)
    xkis2, ykis2 = torch.min(x2, x2g), torch.min(y2, y2g)
    intsctk = torch.zeros_like(x1)
    mask = (ykis2 > ykis1) & (xkis2 > xkis1)
    intsctk[mask] = (xkis2[mask] - xkis1[mask]) * (ykis2[mask] - ykis1[mask])
    unionk = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intsctk
    iouk = intsctk / (unionk + GIOU_EPS)
    xc1, yc1 = torch.min(x1, x1g), torch.min(y1, y1g)
    xc2, yc2 = torch.max(x2, x2g), torch.max(y2, y2g)
    area_c = (xc2 - xc1) * (yc2 - yc1)
    miouk = iouk - ((area_c - unionk) / (area_c + GIOU_EPS))
    return (1 - miouk).mean()


def torch_softmax(labels, logits):
    import torch.nn.functional as F
    return F.cross_entropy(logits, labels, reduction="mean")  # probability targets


def torch_ctc(labels, logits, label_lengths, logit_lengths):
    # reduction "none" then mean over the batch: torch's own "mean" also divides each
    # sequence's loss by its label length, which lossc's `mean` does not.
    import torch.nn.functional as F
    log_probs = F.log_softmax(logits, dim=-1).transpose(0, 1)  # [t, b, k]
    per_seq = F.ctc_loss(log_probs, labels, logit_lengths, label_lengths, blank=0,
                         reduction="none", zero_infinity=False)
    return per_seq.mean()


BENCHES = [
    dict(name="mean_squared_error", inputs=["labels", "predictions"], grad="predictions",
         dims=dict(n=10**7), small=dict(n=1000), gen=gen_mse, jax=jax_mse, torch=torch_mse),
    dict(name="focal_loss", inputs=["labels", "logits"], grad="logits",
         dims=dict(n=10**7), small=dict(n=1000), gen=gen_focal, jax=jax_focal, torch=torch_focal),
    dict(name="softmax_cross_entropy", inputs=["labels", "logits"], grad="logits",
         dims=dict(n=4096, c=1000), small=dict(n=16, c=10), gen=gen_softmax,
         jax=jax_softmax, torch=torch_softmax),
    dict(name="giou_loss", inputs=["pred_boxes", "target_boxes"], grad="pred_boxes",
         dims=dict(n=10**6), small=dict(n=200), gen=gen_giou, jax=jax_giou, torch=torch_giou),
    dict(name="ctc_loss", inputs=["labels", "logits", "label_lengths", "logit_lengths"],
         grad="logits", dims=dict(b=16, t=100, k=30, s=20), small=dict(b=3, t=12, k=5, s=4),
         gen=gen_ctc, jax=jax_ctc, torch=torch_ctc),
]

TORCHVISION_OPS = None


# --------------------------------------------------------------------------- running

def jax_value_grad(jax, bench, arrays):
    import jax.numpy as jnp
    gi = bench["inputs"].index(bench["grad"])
    f = jax.jit(jax.value_and_grad(bench["jax"], argnums=gi))
    args = [jnp.asarray(a) for a in arrays]
    jax.block_until_ready(args)
    return f, args


def time_jax(jax, bench, arrays, warmup, repeat, compiled=None):
    f, args = compiled if compiled is not None else jax_value_grad(jax, bench, arrays)
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    first = time.perf_counter() - t0
    for _ in range(warmup):
        jax.block_until_ready(f(*args))
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def torch_args(torch, bench, arrays):
    out = []
    for name, a in zip(bench["inputs"], arrays):
        t = torch.from_numpy(a.copy())
        if name == bench["grad"]:
            t.requires_grad_(True)
        out.append(t)
    return out, out[bench["inputs"].index(bench["grad"])]


def torch_value_grad(torch, bench, args, x):
    loss = bench["torch"](*args)
    (g,) = torch.autograd.grad(loss, [x])
    return loss, g


def time_torch(torch, bench, arrays, warmup, repeat):
    args, x = torch_args(torch, bench, arrays)
    for _ in range(warmup):
        torch_value_grad(torch, bench, args, x)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        torch_value_grad(torch, bench, args, x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def dims_arg(dims):
    return ",".join(f"{k}={v}" for k, v in dims.items())


def run_lossc_bench(lossc, bench):
    cmd = [lossc, "bench", bench["name"], "--dims", dims_arg(bench["dims"]), "--dtype", "f32",
           "--grad", bench["grad"], "--threads", "1", "--json"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{type(e).__name__}: {e}"
    if p.returncode != 0:
        msg = (p.stderr.strip() or p.stdout.strip()).splitlines()
        return None, f"exit {p.returncode}: {msg[0] if msg else ''}"
    obj = None
    try:
        obj = json.loads(p.stdout)
    except ValueError:
        for line in reversed(p.stdout.strip().splitlines()):
            if line.lstrip().startswith("{"):
                try:
                    obj = json.loads(line)
                    break
                except ValueError:
                    pass
    if not isinstance(obj, dict) or "median_s" not in obj or "compile_s" not in obj:
        return None, "output has no JSON object with median_s and compile_s"
    return obj, None


def run_lossc_eval(lossc, bench, arrays, workdir, backend=None):
    import numpy as np
    cmd = [lossc, "eval", bench["name"], "--reduction", "mean", "--dtype", "f32",
           "--grad", bench["grad"], "--out", os.path.join(workdir, "out")]
    if backend:
        cmd += ["--backend", backend]
    for name, a in zip(bench["inputs"], arrays):
        path = os.path.join(workdir, name + ".npy")
        np.save(path, a)
        cmd += ["--input", f"{name}={path}"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, None, f"{type(e).__name__}: {e}"
    if p.returncode != 0:
        msg = (p.stderr.strip() or p.stdout.strip()).splitlines()
        return None, None, f"exit {p.returncode}: {msg[0] if msg else ''}"
    try:
        value = np.load(os.path.join(workdir, "out", "value.npy"))
        grad = np.load(os.path.join(workdir, "out", bench["grad"] + "_grad.npy"))
    except OSError as e:
        return None, None, f"no output files: {e}"
    return float(value), grad, None


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


def grad_rel(g, ref):
    """max |g - ref| / max |ref| (a relative error that tolerates zero entries)."""
    import numpy as np
    g, ref = np.asarray(g, np.float64), np.asarray(ref, np.float64)
    if g.shape != ref.shape:
        return float("nan")
    return float(np.max(np.abs(g - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


def check(bench, jax, torch, lossc, seed, backend=None):
    """Agreement at the small size: JAX vs torch, and lossc eval vs JAX."""
    import numpy as np
    rng = np.random.default_rng(seed + 1)
    arrays = bench["gen"](rng, bench["small"])
    res = dict(sizes=dims_arg(bench["small"]))
    ref_v = ref_g = None
    if jax is not None:
        try:
            f, args = jax_value_grad(jax, bench, arrays)
            v, g = f(*args)
            ref_v, ref_g = float(v), np.asarray(g)
            res["jax_value"] = ref_v
        except Exception as e:  # noqa: BLE001
            res["jax_error"] = f"{type(e).__name__}: {e}"
    if torch is not None:
        try:
            args, x = torch_args(torch, bench, arrays)
            v, g = torch_value_grad(torch, bench, args, x)
            tv, tg = float(v.detach()), g.numpy()
            res["torch_value"] = tv
            if ref_v is not None:
                res["torch_vs_jax_value_rel"] = rel(tv, ref_v)
                res["torch_vs_jax_grad_rel"] = grad_rel(tg, ref_g)
            else:
                ref_v, ref_g = tv, tg  # compare lossc with torch when JAX is missing
                res["reference"] = "torch"
        except Exception as e:  # noqa: BLE001
            res["torch_error"] = f"{type(e).__name__}: {e}"
    with tempfile.TemporaryDirectory(prefix="lossc-compare-") as d:
        lv, lg, err = run_lossc_eval(lossc, bench, arrays, d, backend)
    if err is not None:
        res["lossc_error"] = err
    else:
        res["lossc_value"] = lv
        if ref_v is not None:
            res["lossc_vs_ref_value_rel"] = rel(lv, ref_v)
            res["lossc_vs_ref_grad_rel"] = grad_rel(lg, ref_g)
    return res


def run_bench(bench, jax, torch, lossc, args):
    import numpy as np
    row = dict(loss=bench["name"], sizes=dims_arg(bench["dims"]), grad=bench["grad"],
               load_before=round(os.getloadavg()[0], 2))
    rng = np.random.default_rng(args.seed)
    arrays = bench["gen"](rng, bench["dims"])
    jax_f = None
    if jax is not None:
        try:
            jax_f = jax_value_grad(jax, bench, arrays)
            row["jax_first_s"], row["jax_median_s"] = time_jax(jax, bench, arrays, args.warmup,
                                                               args.repeat, jax_f)
        except Exception as e:  # noqa: BLE001
            jax_f = None
            row["jax_error"] = f"{type(e).__name__}: {e}"
            print(f"JAX failed on {bench['name']}: {row['jax_error']}", file=sys.stderr)
    if torch is not None:
        try:
            row["torch_median_s"] = time_torch(torch, bench, arrays, args.warmup, args.repeat)
        except Exception as e:  # noqa: BLE001
            row["torch_error"] = f"{type(e).__name__}: {e}"
            print(f"torch failed on {bench['name']}: {row['torch_error']}", file=sys.stderr)
    jax_medians = [row["jax_median_s"]] if "jax_median_s" in row else []
    lossc_medians, ratios = [], []
    for k in range(max(args.rounds, 1)):
        if k > 0 and jax_f is not None:
            # (the first call of an already compiled function: not a compile)
            jax_medians.append(time_jax(jax, bench, arrays, args.warmup, args.repeat, jax_f)[1])
        obj, err = run_lossc_bench(lossc, bench)
        if obj is None:
            row["lossc_error"] = err
            print(f"lossc: n/a ({bench['name']}: {err})", file=sys.stderr)
            break
        if k == 0:
            row["lossc_compile_s"] = float(obj["compile_s"])
        lossc_medians.append(float(obj["median_s"]))
        if len(jax_medians) == k + 1 and lossc_medians[-1] > 0:
            ratios.append(jax_medians[-1] / lossc_medians[-1])
    del arrays, jax_f
    if jax_medians:
        row["jax_median_s"] = statistics.median(jax_medians)
    if lossc_medians:
        row["lossc_median_s"] = statistics.median(lossc_medians)
    if ratios:
        row["jax_over_lossc"] = statistics.median(ratios)
        row["ratio_min"], row["ratio_max"] = min(ratios), max(ratios)
        row["rounds"] = len(ratios)
    row["load_after"] = round(os.getloadavg()[0], 2)
    return row


# --------------------------------------------------------------------------- output

def fmt_s(x):
    if x is None:
        return "n/a"
    if x >= 1:
        return f"{x:.3g} s"
    if x >= 1e-3:
        return f"{x * 1e3:.3g} ms"
    return f"{x * 1e6:.3g} µs"


def fmt_rel(x):
    if x is None:
        return "n/a"
    if isinstance(x, float) and math.isnan(x):
        return "shape mismatch"
    return f"{x:.1e}"


def print_markdown(rows, checks, meta):
    if rows:
        print("| loss | sizes | JAX first call | JAX median | torch median | lossc compile "
              "| lossc median | JAX/lossc |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            ratio = r.get("jax_over_lossc")
            text = f"{ratio:.2f}x" if ratio else "n/a"
            if ratio and r.get("rounds", 1) > 1:
                text += f" ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}x over {r['rounds']} rounds)"
            print(f"| {r['loss']} | {r['sizes']} | {fmt_s(r.get('jax_first_s'))} "
                  f"| {fmt_s(r.get('jax_median_s'))} | {fmt_s(r.get('torch_median_s'))} "
                  f"| {fmt_s(r.get('lossc_compile_s'))} | {fmt_s(r.get('lossc_median_s'))} "
                  f"| {text} |")
        print()
        print(f"f32, reduction mean, value + gradient, one thread pinned to CPU {meta['cpu']}; "
              f"medians of {meta['repeat']} calls after {meta['warmup']} warm-up calls"
              + (f", JAX and lossc timed alternately in {meta['rounds']} rounds (medians of the "
                 "rounds; the ratio is the median of the rounds' ratios)" if meta["rounds"] > 1
                 else "")
              + ". "
              f"{meta['versions']}. 1-min load average before/after each row: "
              + ", ".join(f"{r['loss']} {r['load_before']}/{r['load_after']}" for r in rows)
              + f" ({meta['ncpu']} cores).")
        for r in rows:
            for k in ("jax_error", "torch_error", "lossc_error"):
                if k in r:
                    print(f"- {r['loss']}: {k.split('_')[0]}: n/a ({r[k]})")
        print()
    if checks:
        print("Agreement at a small size (relative difference of the value; max |Δgrad| / "
              f"max |grad|; lossc eval backend: {meta['eval_backend']}):")
        print()
        print("| loss | sizes | value (JAX) | torch vs JAX: value | grad | lossc vs JAX: value "
              "| grad |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for c in checks:
            lossc_v = fmt_rel(c.get("lossc_vs_ref_value_rel")) if "lossc_error" not in c else "n/a"
            lossc_g = fmt_rel(c.get("lossc_vs_ref_grad_rel")) if "lossc_error" not in c else "n/a"
            ref_v = c.get("jax_value")
            print(f"| {c['loss']} | {c['sizes']} | {'n/a' if ref_v is None else f'{ref_v:.7g}'} "
                  f"| {fmt_rel(c.get('torch_vs_jax_value_rel'))} "
                  f"| {fmt_rel(c.get('torch_vs_jax_grad_rel'))} | {lossc_v} | {lossc_g} |")
        for c in checks:
            for k in ("jax_error", "torch_error", "lossc_error"):
                if k in c:
                    print(f"- {c['loss']}: {k.split('_')[0]} check: n/a ({c[k]})")
            if c.get("reference") == "torch":
                print(f"- {c['loss']}: no JAX; lossc compared with torch")


def main():
    args = parse_args()
    cpu = pin_one_thread(args.cpu)
    names = [n for o in args.only for n in o.split(",") if n]
    known = [b["name"] for b in BENCHES]
    for n in names:
        if n not in known:
            sys.exit(f"unknown benchmark {n!r}; known: {', '.join(known)}")
    benches = [b for b in BENCHES if not names or b["name"] in names]
    lossc = args.lossc or os.path.join(REPO_ROOT, "target", "release", "lossc")
    if args.lossc and not os.path.sep in args.lossc:
        lossc = shutil.which(args.lossc) or args.lossc

    import numpy as np
    jax = import_jax()
    torch = import_torch()
    global TORCHVISION_OPS
    if torch is not None:
        TORCHVISION_OPS = import_torchvision_ops()
    versions = [f"numpy {np.__version__}"]
    if jax is not None:
        versions.append(f"jax {jax.__version__}")
        try:
            import optax
            versions.append(f"optax {optax.__version__}")
        except ImportError:
            pass
    if torch is not None:
        versions.append(f"torch {torch.__version__}")
        if TORCHVISION_OPS is not None:
            import torchvision
            versions.append(f"torchvision {torchvision.__version__}")
        else:
            versions.append("torchvision ops: inline copy")
    meta = dict(cpu=cpu, ncpu=os.cpu_count(), repeat=args.repeat, warmup=args.warmup,
                rounds=max(args.rounds, 1),
                versions=", ".join(versions), lossc=lossc,
                eval_backend=args.eval_backend or "lossc default")

    checks = []
    if not args.no_check:
        for b in benches:
            print(f"checking {b['name']} ...", file=sys.stderr)
            c = check(b, jax, torch, lossc, args.seed, args.eval_backend)
            c["loss"] = b["name"]
            checks.append(c)
    rows = []
    if not args.no_time:
        for b in benches:
            print(f"timing {b['name']} ({dims_arg(b['dims'])}) ...", file=sys.stderr)
            rows.append(run_bench(b, jax, torch, lossc, args))

    if args.json:
        print(json.dumps(dict(meta=meta, rows=rows, checks=checks), indent=2))
    else:
        print_markdown(rows, checks, meta)


if __name__ == "__main__":
    main()
