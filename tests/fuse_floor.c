/* The kernel's per-request floor: a libfuse low-level file system that does
 * nothing, single-threaded (fuse_session_loop), for tests/fuse_floor.py.
 *
 * Its root holds symlinks l0..l999 (target "target") and empty files f0..f999,
 * the same tree as fuse_floor.py's pyfuse3 one; every answer is a constant,
 * entries and attributes are cached for an hour, FLUSH answers ENOSYS, getxattr
 * ENODATA.  What a request costs here is the kernel's round trip and libfuse:
 * nothing a Python binding can remove.
 *
 *     gcc -O2 -o fuse_floor_c tests/fuse_floor.c $(pkg-config --cflags --libs fuse3)
 *     ./fuse_floor_c MOUNTPOINT            (foreground; fusermount3 -u ends it)
 */
#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define ENTRIES 1000

static void attr_of(fuse_ino_t ino, struct stat *st)
{
    memset(st, 0, sizeof(*st));
    st->st_ino = ino;
    if (ino == FUSE_ROOT_ID) {
        st->st_mode = S_IFDIR | 0755;
        st->st_nlink = 2;
    } else if (ino < 2 + ENTRIES) {
        st->st_mode = S_IFLNK | 0777;
        st->st_nlink = 1;
        st->st_size = 6;
    } else {
        st->st_mode = S_IFREG | 0644;
        st->st_nlink = 1;
    }
}

static void fl_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct fuse_entry_param e;
    char *end;
    long n;
    (void)parent;
    if ((name[0] != 'l' && name[0] != 'f') || !name[1]) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    n = strtol(name + 1, &end, 10);
    if (*end || n < 0 || n >= ENTRIES) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    memset(&e, 0, sizeof(e));
    e.ino = 2 + n + (name[0] == 'f' ? ENTRIES : 0);
    e.attr_timeout = e.entry_timeout = 3600;
    attr_of(e.ino, &e.attr);
    fuse_reply_entry(req, &e);
}

static void fl_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct stat st;
    (void)fi;
    attr_of(ino, &st);
    fuse_reply_attr(req, &st, 3600);
}

static void fl_readlink(fuse_req_t req, fuse_ino_t ino)
{
    (void)ino;
    fuse_reply_readlink(req, "target");
}

static void fl_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    fi->fh = ino;
    fi->keep_cache = 1;
    fuse_reply_open(req, fi);
}

static void fl_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
    (void)ino; (void)size; (void)off; (void)fi;
    fuse_reply_buf(req, NULL, 0);
}

static void fl_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino; (void)fi;
    fuse_reply_err(req, 0);
}

static void fl_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino; (void)fi;
    fuse_reply_err(req, ENOSYS);
}

static void fl_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
    (void)ino; (void)name; (void)size;
    fuse_reply_err(req, ENODATA);
}

static const struct fuse_lowlevel_ops ops = {
    .lookup = fl_lookup,
    .getattr = fl_getattr,
    .readlink = fl_readlink,
    .open = fl_open,
    .read = fl_read,
    .release = fl_release,
    .flush = fl_flush,
    .getxattr = fl_getxattr,
};

int main(int argc, char *argv[])
{
    char *args[] = {argv[0], "-o", "ro,fsname=floorc,subtype=floorc,default_permissions", NULL};
    struct fuse_args fargs = FUSE_ARGS_INIT(3, args);
    struct fuse_session *se;
    int ret;
    if (argc != 2) {
        fprintf(stderr, "usage: %s MOUNTPOINT\n", argv[0]);
        return 2;
    }
    se = fuse_session_new(&fargs, &ops, sizeof(ops), NULL);
    if (!se || fuse_session_mount(se, argv[1]) != 0)
        return 1;
    ret = fuse_session_loop(se);
    fuse_session_unmount(se);
    fuse_session_destroy(se);
    return ret ? 1 : 0;
}
