#!/bin/sh
# /init of Bulkhead's test guest (busybox sh, PID 1). See guest/README.md for the layout.
#
# It finds the VM's disks by their serial (system, data, app-<name>), mounts the system volume
# read-write at /newroot, the data volume at /newroot/data and each app volume read-only at
# /newroot/apps/<name>, then runs qemu-ga chrooted into /newroot, so guest-exec commands see
# the system volume as `/`. qemu-ga and its libraries stay in the initramfs (bind-mounted at
# /newroot/run/bulkhead-ga); the system volume provides /bin/sh and the commands it runs.
# Without a system disk, qemu-ga runs in the initramfs root.
#
# Power-off: the ACPI power button (QMP system_powerdown) reaches busybox acpid, and qemu-ga's
# guest-shutdown runs the system volume's /sbin/shutdown; both end in SIGUSR2 to this process,
# which stops qemu-ga, unmounts the volumes and powers off.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo 1 >/proc/sys/kernel/printk 2>/dev/null

log() { echo "bulkhead-guest: $*" >/dev/console; }

for m in virtio_pci virtio_blk virtio_console crc32c_generic ext4 virtio_net button evdev \
  xhci_pci usbhid hid_generic; do
  modprobe "$m" 2>/dev/null || log "module $m not loaded"
done

# The kernel probes virtio devices asynchronously: wait (bounded) until the guest agent port
# is there; disks are probed before it, on the same bus.
port=
i=0
while [ $i -lt 100 ]; do
  for n in /sys/class/virtio-ports/*/name; do
    [ -f "$n" ] || continue
    if [ "$(cat "$n")" = org.qemu.guest_agent.0 ]; then
      port=/dev/$(basename "$(dirname "$n")")
    fi
  done
  [ -n "$port" ] && [ -e "$port" ] && break
  i=$((i + 1))
  sleep 0.1
done
[ -n "$port" ] || log "no org.qemu.guest_agent.0 port"

disk_with_serial() {
  for s in /sys/block/vd*/serial; do
    [ -f "$s" ] || continue
    if [ "$(cat "$s")" = "$1" ]; then
      basename "$(dirname "$s")"
      return 0
    fi
  done
  return 1
}

root=/
system=$(disk_with_serial system)
if [ -n "$system" ] && mount -t ext4 -o rw "/dev/$system" /newroot; then
  root=/newroot
  log "system volume /dev/$system mounted"
  mkdir -p /newroot/proc /newroot/sys /newroot/dev /newroot/run /newroot/data /newroot/apps
  mount -t proc proc /newroot/proc
  mount -t sysfs sysfs /newroot/sys
  mount -o bind /dev /newroot/dev
  mount -t tmpfs -o mode=0755 tmpfs /newroot/run
  mkdir -p /newroot/run/bulkhead-ga
  mount -o bind,ro /ga /newroot/run/bulkhead-ga
elif [ -n "$system" ]; then
  log "system volume /dev/$system could not be mounted"
fi

mkdir -p "$root/data" "$root/apps"
data=$(disk_with_serial data)
if [ -n "$data" ]; then
  mount -t ext4 -o rw "/dev/$data" "$root/data" || log "data volume /dev/$data could not be mounted"
fi
for s in /sys/block/vd*/serial; do
  [ -f "$s" ] || continue
  serial=$(cat "$s")
  case "$serial" in
  app-*)
    name=${serial#app-}
    dev=$(basename "$(dirname "$s")")
    mkdir -p "$root/apps/$name"
    mount -t ext4 -o ro,noload "/dev/$dev" "$root/apps/$name" || log "app volume $name could not be mounted"
    ;;
  esac
done

# Runs once, on SIGUSR2 (power button or /sbin/shutdown): stop qemu-ga, flush and unmount, off.
power_off() {
  log "powering off"
  [ -n "$ga" ] && kill "$ga" 2>/dev/null
  [ -n "$tty_shell" ] && kill -KILL "$tty_shell" 2>/dev/null
  sync
  for m in $(awk '{print $2}' /proc/mounts | sort -r); do
    case "$m" in
    /newroot* | /data | /apps/*) umount "$m" 2>/dev/null || mount -o remount,ro "$m" 2>/dev/null ;;
    esac
  done
  sync
  poweroff -f
}
trap power_off USR2

mkdir -p /etc/acpi/PWRF
printf '#!/bin/sh\nkill -USR2 1\n' >/etc/acpi/PWRF/00000080
chmod 755 /etc/acpi/PWRF/00000080
acpid -c /etc/acpi -l /dev/null 2>/dev/null || log "acpid not started"

ga=
if [ -n "$port" ]; then
  ga_cmd="/run/bulkhead-ga/ld.so --library-path /run/bulkhead-ga/lib /run/bulkhead-ga/qemu-ga"
  ga_args="-m virtio-serial -p $port -f /run/qemu-ga.pid -t /run"
  if [ "$root" = / ]; then
    mkdir -p /run/bulkhead-ga && mount -o bind,ro /ga /run/bulkhead-ga
    # shellcheck disable=SC2086
    $ga_cmd $ga_args &
  else
    # shellcheck disable=SC2086
    chroot /newroot $ga_cmd $ga_args &
  fi
  ga=$!
  log "qemu-ga started on $port"
fi

# A shell on the VM's screen (tty1, the VGA text console; the keyboard is the built-in PS/2
# one) for a person at it, and for tests that type through Engine's input path. It runs in the
# same root as qemu-ga, so what it writes the guest agent sees.
tty_shell=
if [ -c /dev/tty1 ]; then
  if [ "$root" = / ]; then
    setsid sh -c 'exec sh -i </dev/tty1 >/dev/tty1 2>&1' &
  else
    setsid chroot /newroot /bin/sh -c 'exec /bin/sh -i </dev/tty1 >/dev/tty1 2>&1' &
  fi
  tty_shell=$!
fi

# PID 1 must not exit; `wait` returns on each signal, so loop.
while true; do
  sleep 3600 &
  wait $!
done
