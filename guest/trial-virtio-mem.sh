#!/usr/bin/env bash
# A manual trial of the guest's virtio-mem driver under QEMU (software emulation,
# TCG: times are emulated, not a real machine's).
#
# Boots the guest as the harness does (crates/meminit-host/src/vm.rs: PVH
# -kernel, -M pc with a lazily reserved RAM backend, serial on stdio,
# isa-debug-exit) plus a virtio-mem device, with hold=serial so that the guest
# waits (polling the device) after its report. Then, through QMP, it resizes the
# device (qom-set requested-size) a few times, waits each time for the guest to
# say it reached the new size, and finally sends the guest a byte so that it
# powers off. Prints the guest's console and QEMU's exit status (33: all held).
#
#   guest/trial-virtio-mem.sh [SIZES...]     default: 3G 512M 0 1G
#
# Environment: MEM (boot RAM, 2G), MAXMEM (10G), VMEM (virtio-mem region, 8G),
# REQ (requested size at boot, 1G), BLOCK (block size, 2M), VMEM_OPTS (more
# virtio-mem-pci properties, e.g. ",unplugged-inaccessible=on"), APPEND (extra
# guest options), KERNEL (a prebuilt guest; otherwise it is built).
set -euo pipefail
cd "$(dirname "$0")"
if [ -z "${KERNEL:-}" ]; then
    cargo build --release --quiet
    KERNEL=target/x86_64-unknown-none/release/meminit-guest
fi
command -v qemu-system-x86_64 >/dev/null ||
    { echo "qemu-system-x86_64 not found: run scripts/setup --vm" >&2; exit 1; }
[ $# -gt 0 ] || set -- 3G 512M 0 1G

exec python3 - "$KERNEL" "$@" <<'EOF'
import json, os, re, socket, subprocess, sys, tempfile, threading, time

kernel, sizes = sys.argv[1], sys.argv[2:]
env = os.environ.get
mem, maxmem, vmem = env("MEM", "2G"), env("MAXMEM", "10G"), env("VMEM", "8G")
req, block = env("REQ", "1G"), env("BLOCK", "2M")
append = "meminit=ondemand hold=serial virtio_mem=on " + env("APPEND", "")
qmp_path = os.path.join(tempfile.mkdtemp(prefix="vmem-trial."), "qmp.sock")

def parse(s):
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    m = re.fullmatch(r"(\d+)([KMGT]?)", s.upper())
    return int(m.group(1)) * units[m.group(2)]

args = [
    "qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max",
    "-nodefaults", "-no-reboot", "-monitor", "none", "-display", "none",
    "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
    "-smp", "1", "-m", f"{mem},maxmem={maxmem},slots=1",
    "-object", f"memory-backend-ram,id=m0,size={mem},reserve=off",
    "-M", "pc,memory-backend=m0",
    "-object", f"memory-backend-ram,id=vmem0,size={vmem},reserve=off",
    "-device", f"virtio-mem-pci,id=vm0,memdev=vmem0,requested-size={req},block-size={block}" + env("VMEM_OPTS", ""),
    "-qmp", f"unix:{qmp_path},server=on,wait=off",
    "-kernel", kernel, "-append", append,
]
print("+ " + " ".join(args), flush=True)
qemu = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT)
lines, cond = [], threading.Condition()

def reader():
    for raw in qemu.stdout:
        line = raw.decode(errors="replace").rstrip("\r\n")
        print(f"{time.monotonic() - t0:7.2f}s | {line}", flush=True)
        with cond:
            lines.append(line)
            cond.notify_all()
    with cond:
        lines.append(None)
        cond.notify_all()

t0 = time.monotonic()
threading.Thread(target=reader, daemon=True).start()

def wait_for(pattern, start, timeout=120):
    """The index of the first line at or after `start` matching `pattern`."""
    deadline = time.monotonic() + timeout
    with cond:
        i = start
        while True:
            while i < len(lines):
                if lines[i] is None:
                    sys.exit("QEMU exited before: " + pattern)
                if re.search(pattern, lines[i]):
                    return i
                i += 1
            left = deadline - time.monotonic()
            if left <= 0:
                sys.exit("timed out waiting for: " + pattern)
            cond.wait(left)

class Qmp:
    def __init__(self, path):
        for _ in range(100):
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                time.sleep(0.1)
        self.f = self.s.makefile("rw")
        json.loads(self.f.readline())  # the greeting
        self.call("qmp_capabilities")

    def call(self, command, **arguments):
        self.f.write(json.dumps({"execute": command, "arguments": arguments}) + "\n")
        self.f.flush()
        while True:
            reply = json.loads(self.f.readline())
            if "event" in reply:
                continue
            if "error" in reply:
                sys.exit(f"QMP {command}: {reply['error']}")
            return reply.get("return")

at = wait_for(r"^MEMINIT-HOLD", 0)
qmp = Qmp(qmp_path)
for size in sizes:
    want = parse(size)
    mib = want >> 20
    print(f"{time.monotonic() - t0:7.2f}s + qom-set requested-size {size}", flush=True)
    qmp.call("qom-set", path="/machine/peripheral/vm0", property="requested-size",
             value=want)
    at = wait_for(rf"^virtio-mem: requested {mib} MiB plugged {mib} MiB", at + 1)
    props = {p: qmp.call("qom-get", path="/machine/peripheral/vm0", property=p)
             for p in ("size", "requested-size")}
    print(f"{time.monotonic() - t0:7.2f}s = QEMU says: {props}", flush=True)
qemu.stdin.write(b"\n")
qemu.stdin.flush()
status = qemu.wait(timeout=120)
time.sleep(0.2)
print(f"QEMU exit status {status} (33: everything held)")
sys.exit(0 if status == 33 else 1)
EOF
