#!/bin/bash
# usrview's dracut module: the view of the store as /sysroot/usr, served from the
# initrd by a daemon that outlives switch-root (see docs/boot.md).
#
# Put the daemon and its whole runtime into the initrd: the Python interpreter
# that runs usrview, the standard-library modules and packages the daemon
# imports, usrview, verifier and the packages they import (listed by
# usrview-runtime.py), libfuse3 (through the compiled modules' libraries), fuse.ko,
# fusermount3, the trusted keys, and usrview-sysroot-usr.service.
#
# Settings (dracut.conf.d or the environment):
#   usrview_python   the interpreter that runs usrview (default: the one in the
#                    `#!` line of the usrview command on PATH)
#   usrview_pythonpath  where that interpreter finds usrview if not by itself
#   usrview_keys     the trusted keys copied into the initrd (default /etc/pki/rpm-gpg)
#   usrview_args     extra arguments of `usrview initrd-mount` (e.g. "-v")

# Only when asked for (-m / add_dracutmodules+=" usrview ").
check() {
    return 255
}

depends() {
    echo systemd systemd-initrd
    return 0
}

installkernel() {
    hostonly='' instmods fuse
}

_usrview_python() {
    local python=${usrview_python:-${USRVIEW_PYTHON:-}} cmd
    if [[ -z $python ]]; then
        cmd=$(command -v usrview) || return 1
        read -r python < "$cmd"
        python=${python#\#!}
        python=${python%% *}
    fi
    [[ -x $python ]] || return 1
    echo "$python"
}

install() {
    local python list kind src rel home exe keys seed
    local site=/usr/lib/usrview/site
    python=$(_usrview_python) || {
        derror "usrview: no Python that runs usrview (set usrview_python)"
        return 1
    }
    # The listing's child also records the code the daemon's imports generate
    # and compile (dataclasses, attrs, namedtuple): read from the initrd at
    # boot instead of compiled again (usrview/codecache.py, USRVIEW_CODE_CACHE).
    mkdir -p "$initdir$site"
    # The daemon's hash seed, drawn once for this initrd and kept in a file only root
    # reads (the unit's EnvironmentFile=; an Environment= line would be shown to every
    # user by systemctl show).  With no seed Python's start reads /dev/urandom, and
    # early in boot, before the kernel's random pool is seeded, the kernel then spends
    # about a second of CPU generating entropy, on the boot's critical path
    # (docs/boot.md, "The kernel's entropy").  The listing's child runs with the same
    # seed, so that the code it records is the code the daemon generates: attrs puts
    # the hash of a name into its __hash__.
    seed=$(od -An -N4 -tu4 /dev/urandom) && seed=${seed//[[:space:]]/} && [[ $seed =~ ^[0-9]+$ ]] || {
        derror "usrview: cannot draw the daemon's hash seed from /dev/urandom"
        return 1
    }
    mkdir -p "$initdir/etc/usrview"
    (umask 077 && echo "PYTHONHASHSEED=$seed" > "$initdir/etc/usrview/initrd.env")
    list=$(PYTHONHASHSEED=$seed PYTHONPATH=${usrview_pythonpath:-${USRVIEW_PYTHONPATH:-}} PYTHONDONTWRITEBYTECODE=1 \
        "$python" "$moddir/usrview-runtime.py" --code-cache="$initdir$site/usrview-generated-code") || {
        derror "usrview: $python cannot list usrview's runtime"
        return 1
    }
    while IFS=$'\t' read -r kind src rel; do
        case $kind in
            python) exe=$src ;;
            home) home=$src ;;
            stdlibdir) stdlibdir=$src ;;
            stdlib)
                if [[ $src == *.so ]]; then
                    inst_library "$src"
                else
                    mkdir -p "$initdir${src%/*}" && cp -a "$src" "$initdir$src"
                fi
                ;;
            site)
                if [[ $src == *.so ]]; then
                    inst_library "$src" "$site/$rel"
                else
                    mkdir -p "$initdir$site/${rel%/*}" && cp -a "$src" "$initdir$site/$rel"
                fi
                ;;
        esac
    done <<< "$list"
    inst_binary "$exe"
    # The libraries the interpreter and the compiled modules need (libpython,
    # libffi for _ctypes, ...), installed now: dracut resolves dependencies at
    # the end, and only of executable files -- a distribution's compiled modules
    # are not (Debian's are 0644).
    find "$initdir$stdlibdir" "$initdir$site" -type f -name '*.so' -print0 \
        | xargs -r -0 "$DRACUT_INSTALL" ${initdir:+-D "$initdir"} -R -- "$initdir$exe" || {
        derror "usrview: the libraries of $exe and its compiled modules cannot be installed"
        return 1
    }
    # Bytecode for every module, so that nothing is compiled at boot (the daemon
    # writes none: -B), and no source: each module's .pyc takes its source's
    # place (-b) and the source goes, as dracut strips programs -- 9 MB fewer for
    # the kernel to unpack.  A traceback still names file and line.  Unchecked
    # hash-based .pyc: the initrd never changes, and a timestamp-based one would
    # be recompiled at every boot by a kernel that does not keep the archive's
    # mtimes (CONFIG_INITRAMFS_PRESERVE_MTIME).  The .pyc name the path the
    # module has in the initrd.
    "$python" -m compileall -q -b -j 0 --invalidation-mode unchecked-hash -s "$initdir" -p / \
        "$initdir$stdlibdir" "$initdir$site" > /dev/null || {
        derror "usrview: compiling the runtime's modules failed"
        return 1
    }
    find "$initdir$stdlibdir" "$initdir$site" -type f -name '*.py' \
        -exec sh -c 'for f; do if [ -f "${f}c" ]; then rm -f "$f"; fi; done' sh {} +
    # Symbol tables of the interpreter's libraries and the compiled modules are
    # not needed to run them (dracut's own strip keeps them): a smaller initrd
    # is unpacked sooner.
    if [[ $do_strip == yes ]] && command -v strip > /dev/null; then
        find "$initdir$stdlibdir" "$initdir$site" -type f -name '*.so' \
            -exec strip --strip-unneeded {} + 2> /dev/null
        find "$initdir$home/lib" -maxdepth 1 -type f -name 'libpython*.so*' \
            -exec strip --strip-unneeded {} + 2> /dev/null
    fi

    sed -e "s|@PYTHON@|$exe|" -e "s|@PYTHONHOME@|$home|" -e "s|@SITE@|$site|" \
        -e "s|@ARGS@|${usrview_args:-${USRVIEW_ARGS:-}}|" \
        "$moddir/usrview-sysroot-usr.service" > "$initdir$systemdsystemunitdir/usrview-sysroot-usr.service"
    $SYSTEMCTL -q --root "$initdir" add-wants initrd-usr-fs.target usrview-sysroot-usr.service

    # /dev/fuse: the module is loaded by systemd-modules-load.service beside the
    # daemon's start (the daemon waits for the device before it mounts, and runs
    # modprobe itself if it is still missing then).
    mkdir -p "$initdir/etc/modules-load.d"
    echo fuse > "$initdir/etc/modules-load.d/usrview.conf"
    inst_multiple -o fusermount3 modprobe

    keys=${usrview_keys:-${USRVIEW_KEYS:-/etc/pki/rpm-gpg}}
    mkdir -p "$initdir/etc/usrview/keys"
    if [[ -d $keys ]]; then
        cp -L "$keys"/* "$initdir/etc/usrview/keys/" 2> /dev/null
    elif [[ -f $keys ]]; then
        cp -L "$keys" "$initdir/etc/usrview/keys/"
    fi
    if [[ -z $(ls -A "$initdir/etc/usrview/keys") ]]; then
        dwarn "usrview: no trusted keys in the initrd (usrview_keys=$keys): the view will not mount"
    fi
}
