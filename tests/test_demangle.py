"""Demangling in-process (libstdc++'s __cxa_demangle), compared with c++filt on
real mangled names: NCCL's kernel host stubs, libstdc++'s own symbols (the
old-ABI std::string ones), and a C++ file built here with templates, lambdas,
anonymous namespaces, operators and very long names."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpuscope.probes import elfsyms, procfs
from gpuscope.probes.demangle import available, demangle

NCCL = Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" \
    / "site-packages" / "nvidia" / "nccl" / "lib" / "libnccl.so.2"

CASES = r"""
#include <functional>
#include <map>
#include <ostream>
#include <string>
#include <vector>
namespace {
struct Hidden { int v; };
void anon_fn(Hidden *h) { h->v++; }
}
namespace outer { namespace inner {
template <typename T, int N> struct Box {
    T v[N];
    void put(const T &x, int i) { v[i % N] = x; }
};
template <typename T> void scale_kernel(T *x, int n, T f) { for (int i = 0; i < n; i++) x[i] *= f; }
template <typename F> void launch(F f, int n) { for (int i = 0; i < n; i++) f(i); }
}}
template struct outer::inner::Box<float, 4>;
template struct outer::inner::Box<std::string, 2>;
template struct outer::inner::Box<std::map<std::string, std::vector<std::function<int(long)>>>, 3>;
template void outer::inner::scale_kernel<double>(double *, int, double);
struct Op {
    int v;
    Op operator+(const Op &o) const { return Op{v + o.v}; }
    bool operator()(int x) const { return x == v; }
};
std::string takes_string(const std::string &s, std::ostream &o) { o << s; return s; }
int use_everything(int n) {
    int acc = 0;
    outer::inner::launch([&](int i) { acc += i; }, n);
    outer::inner::launch([](int i) { (void)i; }, n);
    auto g = [](auto x) { return x + 1; };
    Hidden h{n};
    anon_fn(&h);
    Op a{1}, b{2};
    return acc + g(1) + (int)g(2.0) + (a + b).v + a(n) + h.v;
}
"""

# Types that double at each level: a short mangled name (substitutions) that
# demangles to tens of kilobytes.
DEEP = "template <typename A, typename B> struct P {};\n" \
       "template <typename T> int deep(T *) { return 1; }\n" \
       "template int deep<NESTED>(NESTED *);\n"


def _cxxfilt(names: list[str]) -> list[str]:
    out = subprocess.run(["c++filt"], input="".join(n + "\n" for n in names),
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(out) == len(names)
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("demangle")
    (d / "cases.cpp").write_text(CASES)
    nested = "int"
    for i in range(14):
        nested = f"P<{nested}, {'long' if i % 2 else 'char'}*>" if i % 3 == 0 else f"P<{nested}, {nested}>"
    (d / "deep.cpp").write_text(DEEP.replace("NESTED", nested))
    out = {}
    for name, src, flags in (("new", "cases.cpp", []),
                             ("old", "cases.cpp", ["-D_GLIBCXX_USE_CXX11_ABI=0"]),
                             ("deep", "deep.cpp", [])):
        lib = d / f"lib{name}.so"
        subprocess.run(["g++", "-shared", "-fPIC", "-O0", "-std=c++17", *flags, "-o", str(lib),
                        str(d / src)], check=True)
        out[name] = str(lib)
    return out


def _libstdcxx() -> str:
    """The libstdc++ the demangler loaded into this process."""
    return next(m.path for m in procfs.maps(os.getpid()) if "/libstdc++.so" in m.path)


def _mangled(path: str) -> list[str]:
    t = elfsyms.symbols(path)
    assert t is not None
    return sorted({n for n in [*t.names, *t.exported] if n.startswith("_Z")})


def test_known_names():
    assert available()
    assert demangle("_ZN9mykernels12scale_kernelIfEEvPT_iS1_") == \
        "void mykernels::scale_kernel<float>(float*, int, float)"
    assert demangle("_ZZ4mainENKUlvE_clEv") == "main::{lambda()#1}::operator()() const"
    assert demangle("_ZN12_GLOBAL__N_13fooEv") == "(anonymous namespace)::foo()"
    assert demangle("_Z3foov.cold") == "foo() [clone .cold]"
    # old ABI: spelt out as c++filt does, "> >" included
    assert demangle("_ZNKSt4hashISsEclESs") == (
        "std::hash<std::basic_string<char, std::char_traits<char>, std::allocator<char> > >"
        "::operator()(std::basic_string<char, std::char_traits<char>, std::allocator<char> >) const")


@pytest.mark.parametrize("name", ["main", "cudaLaunchKernel", "i", "Ss", "", "ncclAllReduce",
                                  "_Zfoo", "_Z", "_ZN3foo", "_Z3foo\u00e9", "_Z" + "x" * 100_000])
def test_what_is_not_a_valid_mangled_name_stays_as_it_is(name):
    assert demangle(name) == name  # "i" would be "int" if type codes were demangled


def test_built_cases_agree_with_cxxfilt(built):
    """Templates, lambdas (generic ones too), anonymous namespaces, operators, both
    std::string ABIs, and names of tens of kilobytes."""
    if shutil.which("c++filt") is None:
        pytest.skip("c++filt (binutils) is not installed: nothing to compare with")
    names = [n for lib in built.values() for n in _mangled(lib)]
    mine = [demangle(n) for n in names]
    assert mine == _cxxfilt(names)
    joined = "\n".join(mine)
    for part in ("(anonymous namespace)::anon_fn", "{lambda(int)#1}", "{lambda(auto:1)#3}::operator()<double>",
                 "outer::inner::Box<std::__cxx11::basic_string<char",
                 "outer::inner::Box<std::basic_string<char, std::char_traits<char>, "
                 "std::allocator<char> >, 2>::put", "Op::operator+(Op const&) const",
                 "void outer::inner::scale_kernel<double>(double*, int, double)"):
        assert part in joined, part
    assert max(len(m) for m in mine) > 20_000


@pytest.mark.parametrize("lib", ["nccl", "libstdc++"])
def test_real_libraries_agree_with_cxxfilt(lib):
    """Every mangled name of NCCL (its kernel host stubs among them) and of libstdc++.
    A few names this libstdc++ cannot parse (newer manglings) stay mangled; c++filt
    may know them. Nothing else may differ."""
    if shutil.which("c++filt") is None:
        pytest.skip("c++filt (binutils) is not installed: nothing to compare with")
    if lib == "nccl":
        if not NCCL.exists():
            pytest.skip(f"{NCCL} is missing: pip install the test extras (nvidia-*-cu12)")
        path = str(NCCL)
    else:
        path = _libstdcxx()
    names = _mangled(path)
    assert len(names) > 1000
    mine = [demangle(n) for n in names]
    theirs = _cxxfilt(names)
    differ = [(n, m, c) for n, m, c in zip(names, mine, theirs, strict=True) if m != c]
    assert all(m == n for n, m, _ in differ), differ[:3]  # only "left as it was"
    assert len(differ) <= len(names) // 100, differ[:3]
    if lib == "nccl":
        kernels = [m for m in mine if "ncclDevKernel" in m or "ncclSymkDevKernel" in m]
        assert kernels and all("(" in k for k in kernels[:50])


LEAK = r"""
import os, sys
from gpuscope.probes import procfs
from gpuscope.probes.demangle import demangle
name = "_ZN5outer5inner3BoxI" + "N5outer5inner3BoxIiLi4EEE" * 20 + "Li4EE3putERKS2_i"
raw = demangle.__wrapped__        # past the cache: every call demangles and frees
assert raw(name) != name
before = procfs.stat(os.getpid()).rss
for _ in range(int(sys.argv[1])):
    raw(name)
print(procfs.stat(os.getpid()).rss - before)
"""


def test_the_demangled_buffer_is_freed():
    """A leak of the malloc'd result (~1 KB per call here) would show in RSS."""
    out = subprocess.run([sys.executable, "-c", LEAK, "100000"], capture_output=True, text=True,
                         check=True).stdout
    pages = int(out)
    assert pages * os.sysconf("SC_PAGE_SIZE") < 16 << 20  # a leak would be ~100 MB


def test_without_libstdcxx_names_stay_mangled():
    """In a mount namespace where libstdc++.so.6 is an empty file, the module loads
    and returns names unchanged, as on a machine without it."""
    lib = _libstdcxx()
    code = ("from gpuscope.probes.demangle import available, demangle;"
            "print(available(), demangle('_ZN12_GLOBAL__N_13fooEv'))")
    r = subprocess.run(["unshare", "--mount", "sh", "-c",
                        f"mount --bind /dev/null {os.path.realpath(lib)} && "
                        f"exec {sys.executable} -c \"{code}\""],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "_ZN12_GLOBAL__N_13fooEv"]
