#!/usr/bin/env bash
# The usrview demo, for a fresh Debian 12 machine as root: set everything up,
# build two small packages with rpmbuild, sign them with rpmsign (a throwaway
# key), make a copy of one with a single byte of its signed header changed, and
# let `usrview checksig` -- and `rpmkeys --checksig` beside it -- tell them apart.
#
#   bash docs/demo.sh
#
# USRVIEW_DEMO_NO_SETUP=1 skips the setup step (.ci/setup);
# USRVIEW_DEMO_KEEP=1 keeps the work directory for a closer look.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

if [[ "${USRVIEW_DEMO_NO_SETUP:-}" != 1 ]]; then
    bash "$repo/.ci/setup"
fi
usrview="$repo/.venv/bin/usrview"
python="$repo/.venv/bin/python"

work="$(mktemp -d /tmp/usrview-demo.XXXXXX)"
export GNUPGHOME="$work/gnupg"
cleanup() {
    gpgconf --kill gpg-agent 2>/dev/null || true
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

step "A throwaway signing key (RSA-3072, made by gpg)"
mkdir -m 700 "$GNUPGHOME"
gpg --batch --quiet --pinentry-mode loopback --passphrase '' \
    --quick-gen-key 'usrview demo <demo@usrview.invalid>' rsa3072 sign never 2>/dev/null
fpr="$(gpg --batch --with-colons --list-secret-keys 2>/dev/null | awk -F: '/^fpr:/ { print $10; exit }')"
gpg --batch --armor --export "$fpr" > KEY.asc
echo "key $fpr -> KEY.asc"

build() {  # build NAME SUMMARY: a signed noarch package NAME.rpm with one file
    local name=$1 summary=$2 top="$work/build-$1"
    mkdir -p "$top/SOURCES"
    echo "hello from $name" > "$top/SOURCES/hello.txt"
    cat > "$top/$name.spec" <<SPEC
Name: $name
Version: 1.0
Release: 1
Summary: $summary
License: MIT
BuildArch: noarch
%description
$summary, built for the usrview demo.
%install
install -D -m 0644 %{_sourcedir}/hello.txt %{buildroot}/usr/share/$name/hello.txt
%files
/usr/share/$name/hello.txt
SPEC
    rpmbuild -bb --quiet --define "_topdir $top" --define '__os_install_post %{nil}' \
        --define 'debug_package %{nil}' "$top/$name.spec"
    cp "$top"/RPMS/noarch/"$name"-1.0-1.noarch.rpm "$work/$name.rpm"
    rpmsign --addsign --define '__gpg /usr/bin/gpg' --define "_gpg_name $fpr" "$work/$name.rpm" \
        >/dev/null 2>"$work/rpmsign.log" || { cat "$work/rpmsign.log" >&2; exit 1; }
    echo "built and signed $name.rpm"
}

step "Two small packages, built with rpmbuild and signed with rpmsign"
build a "Demo package A"
build b "Demo package B"

step "tampered.rpm: a copy of a.rpm with one byte of its signed header changed"
cp a.rpm tampered.rpm
"$python" - tampered.rpm <<'PY'
import sys
path = sys.argv[1]
data = bytearray(open(path, "rb").read())
at = data.index(b"Demo package A")          # the Summary, inside the signed header
data[at] ^= 0x20                            # "Demo" -> "demo"
open(path, "wb").write(data)
print(f"flipped the byte at offset {at}: Summary is now {data[at:at + 14].decode()!r}")
PY

step "usrview checksig: the header signature of each package"
show usrview checksig --keys KEY.asc a.rpm b.rpm tampered.rpm
status=0
"$usrview" checksig --keys KEY.asc a.rpm b.rpm tampered.rpm > checksig.out || status=$?
cat checksig.out
echo "exit status: $status"

step "rpmkeys --checksig, rpm's own check, on the same files"
rpmkeys --dbpath "$work/rpmdb" --import KEY.asc   # a scratch rpm database trusting KEY.asc
show rpmkeys --checksig a.rpm b.rpm tampered.rpm
rpm_status=0
rpmkeys --dbpath "$work/rpmdb" --checksig a.rpm b.rpm tampered.rpm || rpm_status=$?
echo "exit status: $rpm_status"

# The demo doubles as a smoke test: say so loudly when the outcome is not the expected one.
expected_ok=1
grep -q "^a.rpm: GOOD " checksig.out || expected_ok=0
grep -q "^b.rpm: GOOD " checksig.out || expected_ok=0
grep -q "^tampered.rpm: BAD" checksig.out || expected_ok=0
[[ $status -eq 1 ]] || expected_ok=0
if [[ $expected_ok -ne 1 ]]; then
    echo "demo: UNEXPECTED: wanted a.rpm and b.rpm GOOD, tampered.rpm BAD, exit status 1" >&2
    exit 1
fi
step "As expected: a.rpm and b.rpm are GOOD, tampered.rpm is BAD, and usrview exits 1"
