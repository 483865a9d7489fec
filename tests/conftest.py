import gc
import os
import shutil
import tempfile

import jax
import jax.random as jr
import pytest

_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_NO_OPT_ENV = "JAX_DISABLE_MOST_OPTIMIZATIONS"


def pytest_configure(config):
    """One JAX persistent compilation cache per test session, shared by the xdist workers and
    every study subprocess (they inherit the environment): a study run several times (the resume
    test, its quick run) compiles its functions once. The cache lives in a temporary folder that
    the session removes at its end, so no run ever sees another session's compilations."""
    config._diffeqgen_xla_flags = os.environ.get("XLA_FLAGS")
    _add_fast_compile_flags()
    if os.environ.get("PYTEST_XDIST_WORKER") or _CACHE_ENV in os.environ:
        return  # a worker inherits the controller's folder; a user's own setting wins
    folder = tempfile.mkdtemp(prefix="diffeqgen-jax-cache-")
    config._diffeqgen_jax_cache = folder
    os.environ[_CACHE_ENV] = folder
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
    os.environ.setdefault(_NO_OPT_ENV, "1")  # see _compiler_optimisation below
    # This process imported JAX before reading the variables (workers read them at import).
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    jax.config.update("jax_disable_most_optimizations", os.environ[_NO_OPT_ENV] == "1")


# XLA:CPU flags for the test session that change how XLA generates code (the operations stay the
# same; float32 round-off can differ, below).
# XLA's compilation was about 60% of the suite's time. Measured (issue 10) on 2 shared cores
# (load 2-6), one process (-p no:xdist) running test_paths, test_cnf, test_losses and
# test_fewstep (231 tests, 2223 compilations), CPU time of the process:
#   no flags (two runs):                  266 s and 268 s (XLA compilation 208 s and 177 s)
#   use_fusion_emitters=false only:       149 s (XLA compilation 68 s)
#   both flags below (two runs):          134 s and 140 s (XLA compilation 58 s)
# The same programs compiled both ways in one process (paired): 0.45x the compile CPU time
# without the fusion emitters (test_losses), 0.43x (test_fewstep), 0.38x with both flags.
# test_image_study (compiled with optimisations on), test_xla_options and the throughput and
# solver_accuracy benchmarks: 134 s CPU against 201 s; the image study's quick run alone 63 s
# CPU against 75 s (its programs run no slower).
# - xla_cpu_use_fusion_emitters=false: XLA's older elemental emitter for fused loops instead of
#   the MLIR fusion emitters, which cost far more to compile. Same operations, different
#   float32 round-off in places: random draws, a CNF log-density and elementwise functions came
#   out bit-identical; a loss gradient differed at round-off (1e-6 of its largest entry in
#   float32, 1e-15 in float64; summation order in a fused reduction); the main study's quick
#   tanh(z^3) flow, whose float32 log-density error sits at round-off, had max error 8.3e-6
#   against 5.8e-7 with the default emitters (test_cnf_study.py's bound says so).
# - xla_cpu_parallel_codegen_split_count=1: no splitting of each program's LLVM module into
#   parts compiled on parallel threads; with each core busy with a test worker the split only
#   adds work. The same checks gave bit-identical results.
# Study subprocesses and xdist workers inherit them through the environment. A flag the user
# already set in XLA_FLAGS wins (e.g. --xla_cpu_use_fusion_emitters=true).
_FAST_COMPILE_FLAGS = {
    "xla_cpu_use_fusion_emitters": "false",
    "xla_cpu_parallel_codegen_split_count": "1",
}


def _add_fast_compile_flags():
    """Append `_FAST_COMPILE_FLAGS` to ``XLA_FLAGS``, keeping every flag the user set there.

    XLA reads ``XLA_FLAGS`` once, when the process first builds compile options; nothing before
    ``pytest_configure`` compiles (``import diffeqgen`` starts no backend), so this process
    sees them too.
    """
    flags = os.environ.get("XLA_FLAGS", "").split()
    given = {flag.lstrip("-").partition("=")[0] for flag in flags}
    flags += [
        f"--{name}={value}" for name, value in _FAST_COMPILE_FLAGS.items() if name not in given
    ]
    os.environ["XLA_FLAGS"] = " ".join(flags)


def pytest_unconfigure(config):
    if hasattr(config, "_diffeqgen_xla_flags"):  # the user's XLA_FLAGS, as they were
        if config._diffeqgen_xla_flags is None:
            os.environ.pop("XLA_FLAGS", None)
        else:
            os.environ["XLA_FLAGS"] = config._diffeqgen_xla_flags
    folder = getattr(config, "_diffeqgen_jax_cache", None)
    if folder is not None:
        os.environ.pop(_CACHE_ENV, None)
        shutil.rmtree(folder, ignore_errors=True)


# Test modules with the longest tests (whole quick studies and benchmarks, 20-70 s each on a
# quiet machine; a module fixture that runs emulated devices in subprocesses). They run before
# everything else so that the two xdist workers finish together (a long test picked up last
# would leave one worker idle). test_sharding.py comes first: its module fixture is then set up
# once, at the head of the first worker's queue, before any test of it can be stolen by the
# other worker (worksteal steals from the tail).
_LONG_MODULES = (
    "test_sharding.py",
    "test_benchmarks.py",
    "test_image_study.py",
    "test_cnf_study.py",
    "test_studies_diffusion.py",
    "test_studies_fm.py",
    "test_reflow_study.py",
    "test_conditional_study.py",
    "test_ebm_study.py",
    "test_readme.py",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(_LONG_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept within


# Modules whose tests spend their time running compiled programs, not compiling them: XLA's
# optimisations pay for themselves there. Measured module by module on a quiet machine: the image
# study's quick run took 175 s without them against about 55 s with them; the solver_accuracy and
# throughput quick runs, the image-network, sharding and exact-field modules were all faster
# without them (78 s against 94 s, 32 against 47, 35 against 42, 29 against 32).
_OPTIMISED_MODULES = ("test_image_study.py",)


@pytest.fixture(autouse=True, scope="module")
def _compiler_optimisation(request):
    """Compile with XLA's optimisations off (``jax_disable_most_optimizations``), except in the
    modules of ``_OPTIMISED_MODULES``.

    Most tests run small programs once or a few times, and on a CPU the LLVM optimisation of
    each compiled program costs more than it saves: the CPU time of the fewstep, train and cnf
    modules fell by a third with them off (383 s against 260 s), and the main study's quick run
    from 38 s to 33 s, while a quick image study, which trains convolutional networks for
    hundreds of steps, took 4x longer. Only XLA's code generation changes (results can move at
    round-off level); the studies' own runs and every user's program keep JAX's default. Study
    subprocesses inherit the setting through the environment. A user's own
    ``JAX_DISABLE_MOST_OPTIMIZATIONS`` wins.
    """
    if os.environ.get(_NO_OPT_ENV) != "1" or request.path.name not in _OPTIMISED_MODULES:
        yield
        return
    os.environ[_NO_OPT_ENV] = "0"
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        os.environ[_NO_OPT_ENV] = "1"
        jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture
def key():
    return jr.key(0)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Free every compiled XLA program after a test module once a quarter of the kernel's
    memory-mapping limit is in use.

    Each program XLA's CPU backend keeps alive holds its own memory mappings (code, constants,
    data: about a dozen for a small scanned MLP). A worker that runs half the suite keeps tens
    of thousands of programs unless they are freed, and when the process reaches the kernel's
    ``vm.max_map_count`` (65530 by default) the next compilation's ``mmap`` fails and XLA
    crashes with a segmentation fault (seen in CI, always late in a worker's life). Clearing
    JAX's caches brings a worker back near its starting count; the session's persistent
    compilation cache (above) makes the recompilations cheap. Below a quarter of the limit the
    caches are kept: the next modules reuse what is already traced and compiled (the same
    library functions at the same shapes, the same eager operations). Clearing after every
    module instead compiled 8439 programs in one suite run against 7485 when clearing only
    above an eighth of the limit (issue 10, a busy run; counts, not times).
    """
    yield
    count, limit = _memory_mappings()
    if count is not None and count < limit // 4:
        return  # far from the limit: keep what the next modules can reuse
    jax.clear_caches()
    gc.collect()
    count, limit = _memory_mappings()
    if count is not None and count > limit // 2:  # still near the limit: something holds them
        pytest.fail(
            f"this worker still has {count} memory mappings after freeing JAX's compiled "
            f"programs (kernel limit vm.max_map_count = {limit}); a module- or session-scoped "
            "object is keeping compiled programs alive, and XLA will crash at the limit"
        )


def _memory_mappings() -> tuple[int | None, int]:
    """(this process's memory mappings, the kernel's limit); None where /proc is unavailable."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            limit = int(f.read())
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f), limit
    except OSError:
        return None, 0


@pytest.fixture
def x64():
    """Enable float64 for one test only, restoring the previous setting afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)
