"""The compiled kernels' on-disk cache is an optimisation: a cache that cannot be written never fails a run."""

import subprocess
import sys
import textwrap


def test_a_kernel_compiles_and_runs_when_its_cache_cannot_be_written(tmp_path):
    """Under a file-size limit of 2000 bytes with a cold cache (numba's cache write raises
    ``OSError: File too large``), the kernel still runs and returns the right value;
    without the tolerant cache the same script fails."""
    script = textwrap.dedent("""
        import resource, sys
        import numpy as np
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
        from models.compiled import compiled
        from numba import njit

        def dot(a, b):
            total = 0.0
            for i in range(a.size):
                total += a[i] * b[i]
            return total

        kernel = compiled(dot) if sys.argv[1] == "tolerant" else njit(cache=True)(dot)
        print(kernel(np.arange(5.0), np.ones(5)))
    """)
    path = tmp_path / "kernel_under_limit.py"
    path.write_text(script)
    env_base = {"PYTHONPATH": ":".join(sys.path), "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}  # a .pyc written under the limit would be cut short
    runs = {}
    for mode in ("tolerant", "plain"):
        env = {**env_base, "NUMBA_CACHE_DIR": str(tmp_path / f"cache_{mode}")}
        runs[mode] = subprocess.run([sys.executable, str(path), mode], capture_output=True, text=True, env=env, timeout=300)
    assert runs["tolerant"].returncode == 0, runs["tolerant"].stderr
    assert float(runs["tolerant"].stdout.strip()) == 10.0
    assert runs["plain"].returncode != 0 and "File too large" in runs["plain"].stderr
