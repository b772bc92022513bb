#!/usr/bin/env bash
# The usrview demo, for a fresh Debian 12 machine as root.  It sets everything
# up, then walks the whole flow:
#   1. builds small packages with rpmbuild, signs them with rpmsign (a throwaway
#      key), and shows `usrview checksig` (and rpmkeys beside it) catching a copy
#      with one byte of its signed header changed;
#   2. makes a store on a btrfs file system on a loop device, deploys an image,
#      deploys an update, shows `status` and `diff`;
#   3. mounts the image as a read-only view, lists its package headers, runs a
#      program from it;
#   4. tampers with a file in the store: once the kernel's cached (checked) pages
#      are dropped, the view answers EIO; `usrview verify` reports it the way
#      rpm -V would;
#   5. unmounts and rolls back.
#
#   bash docs/demo.sh
#
# USRVIEW_DEMO_NO_SETUP=1 skips the setup step (.ci/setup);
# USRVIEW_DEMO_KEEP=1 keeps the work directory (the loop device is always detached).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

if [[ "${USRVIEW_DEMO_NO_SETUP:-}" != 1 ]]; then
    bash "$repo/.ci/setup"
fi
usrview="$repo/.venv/bin/usrview"
python="$repo/.venv/bin/python"

work="$(mktemp -d /tmp/usrview-demo.XXXXXX)"
export GNUPGHOME="$work/gnupg"
export USRVIEW_CONFIG=/dev/null   # the demo's own store and keys, not the machine's
loop="" view_pid=""
cleanup() {
    set +e
    if [[ -n "$view_pid" ]] && kill -0 "$view_pid" 2>/dev/null; then
        kill -TERM "$view_pid"; wait "$view_pid" 2>/dev/null
    fi
    mountpoint -q "$work/usr" 2>/dev/null && { fusermount3 -u "$work/usr" || fusermount3 -uz "$work/usr"; }
    mountpoint -q "$work/btrfs" 2>/dev/null && { umount "$work/btrfs" || umount -l "$work/btrfs"; }
    [[ -n "$loop" ]] && losetup -d "$loop"
    gpgconf --kill gpg-agent 2>/dev/null
    if [[ "${USRVIEW_DEMO_KEEP:-}" == 1 ]]; then
        echo "(work directory kept: $work)"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
cd "$work"

step() { printf '\n== %s\n' "$*"; }
show() { printf '$ %s\n' "$*"; }
unexpected() { echo "demo: UNEXPECTED: $*" >&2; exit 1; }

step "A throwaway signing key (RSA-3072, made by gpg)"
mkdir -m 700 "$GNUPGHOME"
gpg --batch --quiet --pinentry-mode loopback --passphrase '' \
    --quick-gen-key 'usrview demo <demo@usrview.invalid>' rsa3072 sign never 2>/dev/null
fpr="$(gpg --batch --with-colons --list-secret-keys 2>/dev/null | awk -F: '/^fpr:/ { print $10; exit }')"
gpg --batch --armor --export "$fpr" > KEY.asc
echo "key $fpr -> KEY.asc"

# build NAME VERSION SUMMARY INSTALL-COMMANDS FILES: a signed noarch package NAME-VERSION.rpm
build() {
    local name=$1 version=$2 summary=$3 install=$4 files=$5 top="$work/build-$1-$2"
    mkdir -p "$top"
    cat > "$top/$name.spec" <<SPEC
Name: $name
Version: $version
Release: 1
Summary: $summary
License: MIT
BuildArch: noarch
%description
$summary, built for the usrview demo.
%install
$install
%files
$files
SPEC
    rpmbuild -bb --quiet --define "_topdir $top" --define '__os_install_post %{nil}' \
        --define 'debug_package %{nil}' "$top/$name.spec"
    cp "$top/RPMS/noarch/$name-$version-1.noarch.rpm" "$work/$name-$version.rpm"
    rpmsign --addsign --define '__gpg /usr/bin/gpg' --define "_gpg_name $fpr" "$work/$name-$version.rpm" \
        >/dev/null 2>"$work/rpmsign.log" || { cat "$work/rpmsign.log" >&2; exit 1; }
    echo "built and signed $name-$version.rpm"
}

step "Packages, built with rpmbuild and signed with rpmsign"
build hello 1.0 "A greeting program" '
mkdir -p %{buildroot}/usr/bin
printf "#!/bin/sh\necho \"hello from a usrview view: \$(cat \"\$(dirname \"\$0\")/../share/greeting/message.txt\")\"\n" > %{buildroot}/usr/bin/hello
chmod 0755 %{buildroot}/usr/bin/hello' '/usr/bin/hello'
for v in 1.0 1.1; do
    build greeting "$v" "The greeting text" "
mkdir -p %{buildroot}/usr/share/greeting %{buildroot}/etc
echo 'Hello, world (greeting $v)' > %{buildroot}/usr/share/greeting/message.txt
echo 'volume=11' > %{buildroot}/etc/greeting.conf" '/usr/share/greeting
%config(noreplace) /etc/greeting.conf'
done

step "checksig: a copy of hello-1.0.rpm with one byte of its signed header changed"
cp hello-1.0.rpm tampered.rpm
"$python" - tampered.rpm <<'PY'
import sys
path = sys.argv[1]
data = bytearray(open(path, "rb").read())
at = data.index(b"A greeting program")      # the Summary, inside the signed header
data[at] ^= 0x20                            # "A" -> "a"
open(path, "wb").write(data)
print(f"flipped the byte at offset {at}: Summary is now {data[at:at + 18].decode()!r}")
PY
show usrview checksig --keys KEY.asc hello-1.0.rpm greeting-1.0.rpm tampered.rpm
status=0
"$usrview" checksig --keys KEY.asc hello-1.0.rpm greeting-1.0.rpm tampered.rpm > checksig.out || status=$?
cat checksig.out
echo "exit status: $status"
rpmkeys --dbpath "$work/rpmdb" --import KEY.asc   # a scratch rpm database trusting KEY.asc
show rpmkeys --checksig hello-1.0.rpm greeting-1.0.rpm tampered.rpm
rpm_status=0
rpmkeys --dbpath "$work/rpmdb" --checksig hello-1.0.rpm greeting-1.0.rpm tampered.rpm || rpm_status=$?
echo "exit status: $rpm_status"
grep -q "^hello-1.0.rpm: GOOD " checksig.out && grep -q "^greeting-1.0.rpm: GOOD " checksig.out \
    && grep -q "^tampered.rpm: BAD" checksig.out && [[ $status -eq 1 ]] \
    || unexpected "wanted hello and greeting GOOD, tampered.rpm BAD, exit status 1"

step "A store on btrfs (a 1 GiB sparse file on a loop device)"
truncate -s 1G btrfs.img
loop="$(losetup --find --show btrfs.img)"
mkfs.btrfs -q "$loop"
mkdir btrfs usr
mount "$loop" btrfs
store="$work/btrfs/store"
echo "btrfs on $loop, mounted at $work/btrfs; the store will be $store"

step "Deploy image 1: hello 1.0 and greeting 1.0"
mkdir image-1 image-2
cp hello-1.0.rpm greeting-1.0.rpm image-1/
cp hello-1.0.rpm greeting-1.1.rpm image-2/
show usrview deploy --store STORE --keys KEY.asc image-1
"$usrview" deploy --store "$store" --keys KEY.asc image-1

step "Deploy image 2: the update to greeting 1.1"
show usrview deploy --store STORE --keys KEY.asc image-2
"$usrview" deploy --store "$store" --keys KEY.asc image-2
show usrview status --store STORE
"$usrview" status --store "$store"
show usrview diff --store STORE previous current
"$usrview" diff --store "$store" previous current | tee diff.out
grep -q "greeting" diff.out || unexpected "diff does not show the greeting upgrade"
echo "(each package is a read-only btrfs subvolume; unchanged files are shared by reflinks)"
btrfs subvolume list -o "$store/packages" | sed 's/.*path /  /'

step "Mount image 2 as a read-only /usr view (FUSE), every file checked on first open"
show usrview mount --store STORE --keys KEY.asc --foreground $work/usr '&'
"$usrview" mount --store "$store" --keys KEY.asc --foreground "$work/usr" 2> view.log &
view_pid=$!
for _ in $(seq 100); do
    mountpoint -q "$work/usr" && break
    kill -0 "$view_pid" 2>/dev/null || { cat view.log >&2; unexpected "the view did not start"; }
    sleep 0.1
done
mountpoint -q "$work/usr" || unexpected "the view is not mounted"
grep " $work/usr " /proc/mounts
show ls -l usr/lib/sysimage/packages
ls -l usr/lib/sysimage/packages
show ls -lR usr/bin usr/share/greeting
ls -lR usr/bin usr/share/greeting
show usr/bin/hello
"$work/usr/bin/hello" | tee hello.out
grep -q "greeting 1.1" hello.out || unexpected "hello did not run from the view"
echo "(/etc/greeting.conf is outside /usr: deploy reported it, the view leaves it out)"

step "Tamper with a file in the store"
pkgdir="$(ls -d "$store"/packages/greeting-1.1-*)"
btrfs property set -ts "$pkgdir" ro false
target="$pkgdir/usr/share/greeting/message.txt"
"$python" - "$target" <<'PY'
import sys
with open(sys.argv[1], "r+b") as f:       # same size, one byte changed, in place
    data = bytearray(f.read()); data[0] ^= 0x01; f.seek(0); f.write(data)
PY
btrfs property set -ts "$pkgdir" ro true
echo "changed one byte of $target"
# hello read message.txt above: the kernel keeps the checked (signed) bytes it
# was served and would serve them again -- never the changed ones.  Drop the
# page cache, so that the next read reaches the view, which checks again.
show 'sync; echo 3 > /proc/sys/vm/drop_caches'
sync; echo 3 > /proc/sys/vm/drop_caches
show cat usr/share/greeting/message.txt
cat_status=0
cat "$work/usr/share/greeting/message.txt" 2> cat.err || cat_status=$?
cat cat.err
grep -q "Input/output error" cat.err && [[ $cat_status -ne 0 ]] || unexpected "the view served tampered bytes"
echo "the view's log record:"
tail -n 3 view.log
show usrview verify --store STORE --keys KEY.asc
verify_status=0
"$usrview" verify --store "$store" --keys KEY.asc > verify.out || verify_status=$?
cat verify.out
echo "exit status: $verify_status"
grep -q "5.*/usr/share/greeting/message.txt" verify.out && [[ $verify_status -eq 1 ]] \
    || unexpected "verify did not report the tampered file"

step "Unmount, then roll back to image 1"
kill -TERM "$view_pid"; wait "$view_pid" || true; view_pid=""
mountpoint -q "$work/usr" && unexpected "the view is still mounted after SIGTERM"
echo "view stopped and unmounted"
show usrview rollback --store STORE
"$usrview" rollback --store "$store"
show usrview status --store STORE
"$usrview" status --store "$store"

step "As expected: checksig caught the changed header, the view refused the changed file (EIO), verify reported it"
