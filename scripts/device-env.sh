# Sourced by the device scripts (device-check.sh, device-profile.sh) on a GPU
# machine, with $python set. NVRTC compiles the kernels at run time: use a
# pip-installed one (torch's CUDA build brings it) when none is on the
# loader's path.
nvrtc="$("$python" - 2>/dev/null <<'PY'
import glob, os, sys
for root in sys.path:
    for lib in sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib", "libnvrtc.so.1[23]")), reverse=True):
        print(os.path.dirname(lib))
        raise SystemExit
PY
)"
[ -n "$nvrtc" ] && export LD_LIBRARY_PATH="$nvrtc${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# cudarc loads libnccl.so; pip's NCCL (torch's CUDA build brings it) ships
# only libnccl.so.2, so link the name it looks for in a folder of our own.
nccl="$("$python" - 2>/dev/null <<'PY'
import glob, os, sys
for root in sys.path:
    for lib in sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib", "libnccl.so.2"))):
        print(lib)
        raise SystemExit
PY
)"
if [ -n "$nccl" ] && ! ldconfig -p 2>/dev/null | grep -q 'libnccl\.so '; then
    links="$(mktemp -d)"
    ln -s "$nccl" "$links/libnccl.so"
    export LD_LIBRARY_PATH="$links${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"

