"""Build hygiene of the native kernel: torch-free kernel sources that nvcc compiles, and a
clear fallback when the native build is disabled."""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

CSRC = pathlib.Path(__file__).resolve().parents[2] / "csrc"
TORCH_FREE = ["optlayers/qp_ipm.h", "optlayers/qp_cuda.h", "optlayers/qp_cuda_kernels.cuh", "qp_cuda_float.cu",
              "qp_cuda_double.cu"]


@pytest.mark.parametrize("name", TORCH_FREE)
def test_kernel_sources_do_not_include_torch(name):
    text = (CSRC / name).read_text()
    includes = re.findall(r'#include\s*[<"]([^>"]+)[>"]', text)
    assert includes, name
    assert not [i for i in includes if i.startswith(("torch", "ATen", "c10"))], includes


def test_solver_header_compiles_as_plain_cpp(tmp_path):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    src = tmp_path / "check.cpp"
    src.write_text(
        '#include "optlayers/qp_ipm.h"\n'
        "template void optlayers::solve_qp<double, optlayers::SerialGroup>(const optlayers::SerialGroup&,"
        " const optlayers::Problem<double>&, const optlayers::Settings<double>&, double*, double*, double*,"
        " double*, int8_t*, int32_t*, double*, double*);\n"
        "template void optlayers::solve_qp<float, optlayers::SerialGroup>(const optlayers::SerialGroup&,"
        " const optlayers::Problem<float>&, const optlayers::Settings<float>&, float*, float*, float*,"
        " float*, int8_t*, int32_t*, float*, float*);\n"
    )
    out = subprocess.run([cxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", f"-I{CSRC}", str(src)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("unit", ["qp_cuda_float.cu", "qp_cuda_double.cu"])
def test_cuda_kernels_compile_with_nvcc(tmp_path, unit):
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    if nvcc is None:
        pytest.skip("nvcc not installed")
    ptx = tmp_path / "qp_cuda.ptx"
    # PTX with cicc at -O0: full front end and code generation in ~1 s (the -O3 build takes minutes).
    out = subprocess.run([nvcc, "-std=c++17", f"-I{CSRC}", "-arch=sm_90", "-Xcicc", "-O0", "--ptx",
                          str(CSRC / unit), "-o", str(ptx)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    entries = re.findall(r"\.entry\s+(\S+)", ptx.read_text())
    # 30 kernels of this unit's scalar type: solve/kkt × thread/warp/block (6); the small kernel's
    # interior-point stage, polish stage and fused schedule, each for 3 tiles × with/without the
    # clock profile (18); its backward and the warm start's guessed active sets for 3 tiles each
    assert len(entries) == 30, entries
    for stage in ("qp_small_ipm_kernel", "qp_small_polish_kernel", "qp_small_fused_kernel"):
        assert sum(stage in e for e in entries) == 6, (stage, entries)
    assert sum("kkt_small_kernel" in e for e in entries) == 3, entries
    assert sum("active_set_small_kernel" in e for e in entries) == 3, entries


def test_cuda_launch_plan_compiles_as_plain_cpp(tmp_path):
    """qp_cuda.h (launch plan, launcher declarations) is what the torch binding, a host C++ file,
    includes: it must compile with the host compiler and give sane plans."""
    cxx = shutil.which("g++") or shutil.which("c++")
    cuda_inc = next((p for p in ("/usr/local/cuda/include", "/usr/local/cuda/targets/x86_64-linux/include")
                     if os.path.exists(os.path.join(p, "cuda_runtime.h"))), None)
    if cxx is None or cuda_inc is None:
        pytest.skip("no C++ compiler or CUDA headers")
    src = tmp_path / "plan.cpp"
    src.write_text(
        '#include "optlayers/qp_cuda.h"\n#include <cstdio>\n'
        "int main() {\n"
        "  auto t = optlayers::plan_launch(16, 55, 0, 100000, 132, 4, 0);\n"
        "  auto w = optlayers::plan_launch(16, 55, 0, 100000, 132, 4);\n"
        "  auto b = optlayers::plan_launch(100, 200, 0, 10000, 132, 8);\n"
        "  auto s = optlayers::plan_launch(60, 80, 10, 8, 132, 8);\n"
        "  auto u = optlayers::plan_launch(12, 41, 0, 100, 132, 8, 0);\n"
        # B = 1,000 < 16 problems per SM: warp; forced small: small; forced small with p > 0: warp
        "  auto v = optlayers::plan_launch(16, 55, 0, 1000, 132, 4);\n"
        "  auto f = optlayers::plan_launch(16, 55, 0, 1000, 132, 4, 3);\n"
        "  auto e = optlayers::plan_launch(16, 55, 2, 100000, 132, 4, 3);\n"
        "  if (int(v.kernel) != 1 || int(f.kernel) != 3 || int(e.kernel) != 1) return 1;\n"
        # n = 100 with the H100's opt-in shared memory (227 KB): K (80,000 bytes) in shared memory
        "  auto o = optlayers::plan_launch(100, 200, 0, 10000, 132, 8, -1, 227 * 1024);\n"
        "  if (int(o.kernel) != 2 || !o.k_in_shared || o.shared_bytes != 33 * 8 + 100 * 100 * 8) return 1;\n"
        # n = 171 does not fit even then; a limit below the default 48 KB does not lower it
        "  auto g = optlayers::plan_launch(171, 200, 0, 10000, 132, 8, -1, 227 * 1024);\n"
        "  auto d = optlayers::plan_launch(60, 80, 10, 8, 132, 8, -1, 1024);\n"
        "  if (g.k_in_shared || !d.k_in_shared) return 1;\n"
        '  std::printf("%d %lld %d %d %lld %d %d %lld %d %d %lld\\n", int(t.kernel), (long long)t.groups,\n'
        "              int(w.kernel), (long long)w.groups, int(b.kernel), b.k_in_shared, (long long)b.groups,\n"
        "              (long long)s.shared_bytes, int(u.kernel), u.threads, (long long)u.groups);\n"
        "}\n")
    exe = tmp_path / "plan"
    out = subprocess.run([cxx, "-std=c++17", f"-I{CSRC}", f"-I{cuda_inc}", str(src), "-o", str(exe)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    vals = [int(v) for v in subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()]
    t_kernel, t_groups, w_kernel, w_groups, b_kernel, b_kshared, b_groups, s_shared, u_kernel, u_threads, u_groups = vals
    # forced thread; the small kernel (n ≤ 16, p = 0), one thread per problem; block; forced thread
    assert (t_kernel, w_kernel, b_kernel, u_kernel) == (0, 3, 2, 0)
    assert t_groups >= 100_000 and w_groups == 100_000 and b_groups == 132 * 4 and not b_kshared
    assert s_shared == 33 * 8 + 60 * 60 * 8          # K of n = 60 in shared memory
    assert u_threads == 32 and u_groups == 128         # thread kernel, small batch: 32-thread blocks on several SMs


def test_disabled_native_falls_back_with_one_warning():
    code = (
        "import warnings, torch, optlayers as ol\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    P = ol.testing.random_qp(2, 4, 5, 1)\n"
        "    s1 = ol.solve_qp(*P.data(), return_solution=True)\n"
        "    s2 = ol.solve_qp(*P.data(), return_solution=True)\n"
        "msgs = [str(x.message) for x in w if 'native' in str(x.message)]\n"
        "print(s1.backend, s2.backend, len(msgs), ol.native.status())\n"
        "assert msgs and 'OPTLAYERS_NATIVE' in msgs[0]\n"
    )
    env = dict(os.environ, OPTLAYERS_NATIVE="0")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    first = out.stdout.split()
    assert first[:3] == ["torch", "torch", "1"], out.stdout


def test_explicit_native_request_when_disabled_is_a_clear_error():
    code = (
        "import optlayers as ol\n"
        "P = ol.testing.random_qp(2, 4, 5, 1)\n"
        "try:\n"
        "    ol.solve_qp(*P.data(), backend='native')\n"
        "except RuntimeError as e:\n"
        "    print('ERR', e)\n"
    )
    env = dict(os.environ, OPTLAYERS_NATIVE="0")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "ERR QP backend 'native' is not available: disabled by OPTLAYERS_NATIVE=0" in out.stdout, out.stdout + out.stderr


_DRIVER = r"""
#include "optlayers/qp_ipm.h"
#include <cstdio>
#include <vector>
int main(int argc, char** argv) {
  FILE* f = std::fopen(argv[1], "rb");
  long hdr[4];
  if (std::fread(hdr, 8, 4, f) != 4) return 2;
  const int B = hdr[0], n = hdr[1], m = hdr[2], p = hdr[3];
  std::vector<double> Q(B * n * n), q(B * n), G(B * m * n), h(B * m), A(B * p * n), b(B * p);
  for (auto* v : {&Q, &q, &G, &h, &A, &b})
    if (std::fread(v->data(), 8, v->size(), f) != v->size()) return 2;
  optlayers::Settings<double> set{1e-9, 1e-8, 1e-11, 1e-9, 0.99, 50, true};
  std::vector<double> work(optlayers::workspace_size(n, m, p)), x(n), lam(m), nu(p);
  int8_t st; int32_t it;
  optlayers::SerialGroup g;
  for (int i = 0; i < B; ++i) {
    optlayers::Problem<double> d{&Q[i * n * n], &q[i * n], &G[i * m * n], &h[i * m], &A[i * p * n], &b[i * p], n, m, p};
    optlayers::solve_qp(g, d, set, work.data(), x.data(), lam.data(), nu.data(), &st, &it);
    std::printf("%d", int(st));
    for (double v : x) std::printf(" %.17g", v);
    std::printf("\n");
  }
}
"""


@pytest.mark.parametrize("flags", [["-O2"], ["-O2", "-mavx2", "-mfma"], ["-O3", "-march=native"]],
                         ids=["baseline", "avx2", "native"])
def test_header_solves_planted_qps_on_every_host_simd_path(tmp_path, flags):
    """The host SIMD paths (AVX-512 registers, 32-byte vectors, plain SSE) solve the same problems:
    each build of a tiny driver must recover the planted solutions (CI exercises one path only)."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    if "-mavx2" in flags and "avx2" not in pathlib.Path("/proc/cpuinfo").read_text():
        pytest.skip("CPU without AVX2")
    import numpy as np
    import torch

    import optlayers as ol

    data = tmp_path / "qp.bin"
    for B, n, m, p in [(3, 5, 7, 2), (2, 13, 20, 4), (2, 50, 50, 10)]:
        pr = ol.testing.random_qp(B, n, m, p, dtype=torch.float64, seed=n)
        with open(data, "wb") as f:
            np.array([B, n, m, p], dtype=np.int64).tofile(f)
            for t in (pr.Q, pr.q, pr.G, pr.h, pr.A, pr.b):
                t.numpy().tofile(f)
        src = tmp_path / "drv.cpp"
        src.write_text(_DRIVER)
        exe = tmp_path / "drv"
        if not exe.exists():
            out = subprocess.run([cxx, "-std=c++17", *flags, f"-I{CSRC}", str(src), "-o", str(exe)],
                                 capture_output=True, text=True)
            assert out.returncode == 0, out.stderr
        run = subprocess.run([str(exe), str(data)], capture_output=True, text=True, check=True)
        rows = [list(map(float, line.split())) for line in run.stdout.strip().splitlines()]
        assert len(rows) == B
        for i, row in enumerate(rows):
            assert row[0] == 0, f"status {row[0]} for problem {i} of {(B, n, m, p)} with {flags}"
            err = np.abs(np.array(row[1:]) - pr.x[i].numpy()).max()
            assert err < 1e-9, (flags, (B, n, m, p), i, err)


def test_cuda_binding_compiles_against_torch_headers(tmp_path):
    """The torch side of the CUDA ops (csrc/qp_cuda_binding.cpp) is only built where torch sees a
    GPU; check its syntax here against this torch's headers and the CUDA runtime headers. A CPU
    torch wheel lacks the generated c10/cuda/impl/cuda_cmake_macros.h (it only defines the
    shared-library export macro), so an empty one stands in for it."""
    cxx = shutil.which("g++") or shutil.which("c++")
    cuda_inc = next((p for p in ("/usr/local/cuda/include", "/usr/local/cuda/targets/x86_64-linux/include")
                     if os.path.exists(os.path.join(p, "cuda_runtime.h"))), None)
    if cxx is None or cuda_inc is None:
        pytest.skip("no C++ compiler or CUDA headers")
    from torch.utils.cpp_extension import include_paths

    stub = tmp_path / "stub" / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    incs = [f"-I{p}" for p in include_paths()] + [f"-I{tmp_path / 'stub'}", f"-I{cuda_inc}", f"-I{CSRC}"]
    out = subprocess.run([cxx, "-std=c++17", "-fsyntax-only", *incs, str(CSRC / "qp_cuda_binding.cpp")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]


def test_float64_defaults_in_the_header_match_tolerances_py():
    """csrc/optlayers/qp_ipm.h's Float64Defaults (what float32 failures are re-solved with in
    double) must be tolerances.py's float64 values."""
    import torch

    from optlayers._src.tolerances import tolerances_for

    text = (CSRC / "optlayers" / "qp_ipm.h").read_text()
    body = re.search(r"struct Float64Defaults \{(.*?)\};", text, re.S).group(1)
    got = {k: float(v) for k, v in re.findall(r"static constexpr double (\w+) = ([0-9.e+-]+);", body)}
    t = tolerances_for(torch.float64)
    assert got == {"tol": t.ipm_tol, "inf_tol": t.infeasibility_tol, "kkt_reg": t.kkt_reg,
                   "polish_tol": t.polish_tol, "step_to_boundary": t.step_to_boundary,
                   "polish_start": t.polish_start}


def test_command_line_entry_point():
    # `python -m optlayers.native …` is a package's __main__: run as a module script it had printed
    # runpy's "found in sys.modules" RuntimeWarning on every call (found by checking the docs' commands).
    env = {**os.environ, "PYTHONWARNINGS": "error::RuntimeWarning"}
    out = subprocess.run([sys.executable, "-m", "optlayers.native", "--help"], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0 and "usage: python -m optlayers.native" in out.stderr
    assert "RuntimeWarning" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "optlayers.native", "bogus"], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 2
