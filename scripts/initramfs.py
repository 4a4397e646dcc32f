#!/usr/bin/env python3
"""Builds the Linux peer's initramfs (a newc cpio) for `meminit vm --peer linux`.

    scripts/initramfs.py KERNEL_TREE BUSYBOX_TREE OUT

KERNEL_TREE and BUSYBOX_TREE are Debian's linux-image and busybox-static packages
unpacked with `dpkg-deb -x`. The archive holds busybox, virtio_pci,
virtio_balloon and virtio_mem with every module they depend on (read from each module's
`depends=`, since a package carries no modules.dep; .ko.xz and .ko.zst are
decompressed), /dev/console, and an /init that loads them, writes and frees the
spike (`meminit_spike=BYTES` on the kernel command line) or the files
(`meminit_files=COUNT`: COUNT tmpfs files of 4 KiB, each deleted but with
probability 1%) at the same markers as the meminit guest, waits for Linux to
report the freed memory to the host, and powers off. With `meminit_hotplug=BYTES`
it runs `meminit vm --hotplug`'s schedule instead: the host grows the virtio-mem
device by BYTES, /init times until the memory is online (MemTotal grew, at most
120 s: else it says how far it got), writes and frees it (or
`meminit_hotplug_use=BYTES` of it) on a tmpfs, and times the shrink back (Linux boots with
`memhp_default_state=online_movable`, so hot-added memory is onlined movable). Needs nothing but Python's standard library (no cpio on the host).
"""

import lzma
import os
import stat
import subprocess
import sys

WANTED = ["virtio_pci", "virtio_balloon", "virtio_mem"]

INIT = r"""#!/bin/busybox sh
# The Linux peer's /init (built by scripts/initramfs.py): the meminit guest's
# workload=spike:SIZE, done by Linux, measured by the host at the same markers.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

# The host measures QEMU at each marker, then sends a line (at most 150 s: at
# the release it waits for Linux's reporting to end).
wait_host() { read -t 150 line || echo "MEMINIT-INIT note: no line from the host in 150 s"; }
mark() { echo "MEMINIT-MARK $1"; wait_host; }
finish() {
    echo "MEMINIT-HOLD waiting for a line on the console (at most 150 s)"
    wait_host
    poweroff -f
}
fail() { echo "MEMINIT-INIT error: $*"; finish; }

for m in $(cat /modules.list); do
    insmod "/lib/modules/$m.ko" || fail "insmod $m failed"
done
reporting=off
for f in /sys/bus/virtio/devices/*/features; do
    [ -e "$f" ] || continue
    # The balloon is virtio device type 5; feature bit 5 is free page reporting.
    d=$(dirname "$f")
    if [ "$(cat "$d/device")" = "0x0005" ] && [ "$(cut -c6 "$f")" = 1 ]; then
        reporting=on
    fi
done
echo "MEMINIT-INIT free page reporting: $reporting"

spike=${meminit_spike:-0}
hotplug=${meminit_hotplug:-0}
hotplug_use=${meminit_hotplug_use:-$hotplug}
total_kib() { while read -r k v _; do [ "$k" = MemTotal: ] && echo "$v" && return; done < /proc/meminfo; }
# Nanoseconds of the kernel's monotonic clock (/proc/timer_list's "now at").
now_ns() { awk '/^now at/ { print $3; exit }' /proc/timer_list; }
# Waits (at most $2 s) until MemTotal is at least ($1 = ge) or at most ($1 = le)
# $3 KiB; prints the ns it took from $4, and whether it got there (1 or 0).
wait_total() {
    deadline=$(( $(now_ns) + $2 * 1000000000 ))
    reached=1
    while :; do
        t=$(total_kib)
        if [ "$1" = ge ] && [ "$t" -ge "$3" ]; then break; fi
        if [ "$1" = le ] && [ "$t" -le "$3" ]; then break; fi
        if [ "$(now_ns)" -gt "$deadline" ]; then echo "MEMINIT-INIT note: MemTotal $t KiB after $2 s" >&2; reached=0; break; fi
    done
    echo $(( $(now_ns) - $4 )) $reached
}
if [ "$hotplug" -gt 0 ]; then
    # meminit vm --hotplug: the host measures QEMU at each marker; at hp-ready it
    # asks the virtio-mem device for $hotplug more bytes (qom-set requested-size)
    # and then sends the line, at hp-freed it asks for them back.
    before=$(total_kib)
    want=$(( before + hotplug / 1024 ))
    mark hp-ready
    t0=$(now_ns)
    set -- $(wait_total ge 120 "$want" "$t0")
    # Not usable in 120 s (Linux could not online it all): say how far it got.
    if [ "$2" = 1 ]; then key=usable_ns; else key=unusable_after_ns; fi
    echo "MEMINIT-HOTPLUG $key $1 total_kib $(total_kib) before_kib $before"
    mark hp-plugged
    mkdir -p /hot
    mount -t tmpfs -o size=$((hotplug_use + 1048576)) tmpfs /hot || fail "mounting a tmpfs for the hot-plugged memory failed"
    mib=$(( hotplug_use / 1048576 ))
    dd if=/dev/zero of=/hot/file bs=1048576 count=$mib 2>/dev/null || echo "MEMINIT-INIT note: writing $mib MiB stopped short"
    echo "MEMINIT-HOTPLUG written_kib $(du -k /hot/file | cut -f1)"
    mark hp-peak
    rm /hot/file
    umount /hot
    sleep 3
    mark hp-freed
    t0=$(now_ns)
    set -- $(wait_total le 120 "$before" "$t0")
    if [ "$2" = 1 ]; then key=removed_ns; else key=unremoved_after_ns; fi
    echo "MEMINIT-HOTPLUG $key $1 total_after_kib $(total_kib)"
    mark hp-unplugged
    echo "MEMINIT-INIT done"
    finish
fi
files=${meminit_files:-0}
free_kib() { awk '/^MemFree:/ { print $2 }' /proc/meminfo; }
mark boot
if [ "$files" -gt 0 ]; then
    # The meminit guest's workload=files:COUNT: COUNT files of 4 KiB, written by
    # one awk (no fork per file).
    mkdir -p /files
    mount -t tmpfs -o size=$((files * 4096 + 16777216)),nr_inodes=$((files + 1024)) tmpfs /files || fail "mounting a tmpfs for the files failed"
    awk -v n="$files" 'BEGIN { s = sprintf("%4096s", ""); for (i = 0; i < n; i++) { f = "/files/" i; printf "%s", s > f; close(f) } }' || fail "writing $files files failed"
fi
if [ "$spike" -gt 0 ]; then
    mkdir -p /spike
    mount -t tmpfs -o size=$((spike + 1048576)) tmpfs /spike || fail "mounting a tmpfs for the spike failed"
    mib=$(( (spike + 1048575) / 1048576 ))
    dd if=/dev/zero of=/spike/file bs=1048576 count=$mib 2>/dev/null || fail "writing the spike ($mib MiB) failed"
fi
mark peak
if [ "$files" -gt 0 ]; then
    # Each file deleted but with probability 1%, at random (a fixed seed), as
    # the meminit guest does; the host watches QEMU from the free on.
    before=$(free_kib)
    awk -v n="$files" 'BEGIN { srand(1); for (i = 0; i < n; i++) if (rand() >= 0.01) print "/files/" i }' | xargs rm -f || fail "deleting the files failed"
    echo "MEMINIT-MARK freed"
    sleep 3
    echo "MEMINIT-INIT freed_kib $(( $(free_kib) - before )) kept $(ls /files | wc -l)"
fi
if [ "$spike" -gt 0 ]; then
    rm /spike/file
    umount /spike
fi
# Linux reports free blocks of pageblock order and above about 2 s after they
# are freed, in passes 2 s apart; the host waits at the marker until QEMU's
# memory stops falling.
sleep 3
mark released
echo "MEMINIT-INIT done"
finish
"""


def module_paths(tree):
    """Module name (with '-' as '_') -> path, for every module in the tree."""
    found = {}
    for root, _, files in os.walk(os.path.join(tree, "lib/modules")):
        for f in files:
            for ext in (".ko", ".ko.xz", ".ko.zst"):
                if f.endswith(ext):
                    found[f[: -len(ext)].replace("-", "_")] = os.path.join(root, f)
    return found


def module_bytes(path):
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".zst"):
        return subprocess.run(["zstd", "-dc", path], check=True, capture_output=True).stdout
    return data


def depends(data):
    """The modules a module's .modinfo says it depends on."""
    at = data.find(b"\0depends=")
    if at < 0:
        return []
    value = data[at + len(b"\0depends="): data.index(b"\0", at + 1)].decode()
    return [d.replace("-", "_") for d in value.split(",") if d]


def load_order(paths, wanted):
    order, seen = [], set()

    def visit(name, chain):
        if name in seen:
            return
        if name not in paths:
            raise SystemExit(f"initramfs: module {name} (needed by {' <- '.join(chain) or 'us'}) is not in the kernel package")
        seen.add(name)
        for d in depends(module_bytes(paths[name])):
            visit(d, [name] + chain)
        order.append(name)

    for w in wanted:
        visit(w, [])
    return order


class Cpio:
    """A newc archive, written entry by entry."""

    def __init__(self, out):
        self.out = out
        self.ino = 1

    def entry(self, name, mode, data=b"", rdev=(0, 0)):
        name_bytes = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data),
                  0, 0, rdev[0], rdev[1], len(name_bytes), 0]
        self.ino += 1
        header = b"070701" + b"".join(b"%08x" % v for v in fields)
        self.out.write(header + name_bytes)
        self.out.write(b"\0" * (-(len(header) + len(name_bytes)) % 4))
        self.out.write(data)
        self.out.write(b"\0" * (-len(data) % 4))

    def close(self):
        self.entry("TRAILER!!!", 0)


def main():
    if len(sys.argv) != 4:
        raise SystemExit(__doc__.strip().splitlines()[2].strip())
    kernel, busybox_tree, out = sys.argv[1:]
    paths = module_paths(kernel)
    order = load_order(paths, WANTED)
    with open(os.path.join(busybox_tree, "bin/busybox"), "rb") as f:
        busybox = f.read()
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        c = Cpio(f)
        for d in ["bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"]:
            c.entry(d, stat.S_IFDIR | 0o755)
        c.entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
        c.entry("bin/busybox", stat.S_IFREG | 0o755, busybox)
        c.entry("init", stat.S_IFREG | 0o755, INIT.encode())
        c.entry("modules.list", stat.S_IFREG | 0o644, ("\n".join(order) + "\n").encode())
        for m in order:
            c.entry(f"lib/modules/{m}.ko", stat.S_IFREG | 0o644, module_bytes(paths[m]))
        c.close()
    os.replace(tmp, out)
    print(f"initramfs: {out}: busybox and {', '.join(order)}")


if __name__ == "__main__":
    main()
