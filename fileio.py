"""Files that are never left half-written and never taken from their owner: atomic writes, output
checks made before any work, temporaries of dead processes, the one-writer lock of a run, and
folders replaced only when a manifest proves they are the project's own. No torch: demo_data.py
and visualize.py use it too."""
import json
import os
import re
import shutil
import socket
import tempfile


class _RecordingFile:
    """A file that remembers the OSError of a failed write: torch.save reports a full disk as a
    RuntimeError ('unexpected pos ...') that has lost the cause."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self):
        return self.f.flush()

    def __getattr__(self, name):  # tell, seek, ... of the real file (some image writers use them)
        return getattr(self.f, name)


def temp_tag(pid=None):
    """'<host>-<pid>' in the names of this process's temporaries: a process is told dead only on its own
    host (a shared --model_path may be written from several machines, each with its own pids)."""
    host = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"
    return f"{host}-{os.getpid() if pid is None else pid}"


def atomic_write(path, write, binary=True):
    """Call write(f) on <path>.tmp-<host>-<pid> beside path, flush it to disk, then rename it over path: a
    crash or a full disk never leaves half a file, and the previous file stays as it was until the
    new one is complete. Any failure is one OSError naming path and the cause."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{temp_tag()}"
    f = None
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp, "wb" if binary else "w", **({} if binary else {"newline": "", "encoding": "utf-8"})) as raw:
            f = _RecordingFile(raw)
            write(f)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        cause = f.error if f is not None and f.error is not None else e
        if not isinstance(cause, OSError):
            raise
        raise OSError(f"cannot write {path}: {cause.strerror or cause}") from None
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)
    return path


def pid_alive(pid):
    """Whether process pid exists (True where this cannot be told: never delete a live run's file)."""
    if os.name == "nt":  # os.kill would terminate it there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


# what atomic_write leaves when killed: one of this project's outputs, then the writer's host and pid
_TEMP_NAME = re.compile(r".+\.(?:pth|json|csv|png|npy|onnx|pt)\.tmp-([A-Za-z0-9_.]+)-(\d+)")


def _dead_here(host, pid):
    return host == temp_tag(0).rsplit("-", 1)[0] and not pid_alive(int(pid))


def remove_dead_temps(folder):
    """Delete the temporaries of this project's outputs (<name>.tmp-<host>-<pid>) that processes now
    dead on this host left in folder (killed runs); a live process's, another host's and any other
    file are kept. Returns the names removed."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _TEMP_NAME.fullmatch(name)
        path = os.path.join(folder, name)
        if m and _dead_here(*m.groups()) and os.path.isfile(path) and not os.path.islink(path):
            try:
                os.remove(path)
                removed.append(name)
            except OSError:
                pass  # someone else removed it, or it is not ours to remove
    return removed


def check_output_dir(folder, flag, shown=None):
    """A folder that can be made (or exists) and written to, checked without creating anything;
    errors name `shown` (default: the folder)."""
    path, shown = os.path.abspath(folder), shown or folder
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {shown}: cannot write there ({path} is a file, not a folder); choose another path")
    base = path
    while not os.path.exists(base):
        base = os.path.dirname(base)
    if not os.path.isdir(base):
        raise ValueError(f"{flag} {shown}: cannot write there ({base} is a file); choose another path")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {shown}: cannot write there ({base}: permission denied); choose another path")


def make_output_dir(folder, flag):
    """check_output_dir, then create it; one line on failure."""
    check_output_dir(folder, flag)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{flag} {folder}: cannot write there ({e.strerror or e}); choose another folder") from None


INPUT_ENDINGS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".txt", ".npy")


def check_output_file(path, flag, inputs=(), input_dirs=()):
    """An output file that can be written and is none of the inputs: not a checkpoint being read
    (inputs) nor an existing file under a data folder (input_dirs). Checked before any work, so that
    nothing is evaluated for a result that cannot be kept, and no input is replaced by a result."""
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path}: a folder, not a file; give a file name")
    target = os.path.realpath(path)
    for src in inputs:
        if src and os.path.realpath(src) == target:
            raise ValueError(f"{flag} {path}: that is the input {src} of this run; give another file name")
    for folder in input_dirs:  # the images and lists a data folder holds (not results written there before)
        inside = folder and os.path.commonpath([os.path.realpath(folder), target]) == os.path.realpath(folder)
        read = os.path.basename(target).lower().endswith(INPUT_ENDINGS)
        if inside and read and os.path.exists(target):
            raise ValueError(f"{flag} {path}: an image or list of the data folder {folder}; give another file name")
    check_output_dir(os.path.dirname(os.path.abspath(path)), flag, path)
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ValueError(f"{flag} {path}: cannot write it (permission denied); give another file name")


def lock_folder(folder, wait=True):
    """(descriptor, state) of an exclusive OS lock on a folder: "locked"; "held" by another process
    (wait=False only; descriptor None); or "unsupported": no flock (Windows; descriptor None) or a file
    system without folder locks (some NFS; descriptor open but unlocked). Closing the descriptor
    releases it; a folder that cannot be opened is an OSError naming it."""
    try:
        import fcntl
    except ImportError:
        return None, "unsupported"
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as e:
        raise OSError(f"cannot open {folder}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None, "held"
    except OSError:
        return fd, "unsupported"
    return fd, "locked"


class locked_folder:  # noqa: N801 -- used as a context manager
    """lock_folder, waiting, while a file in the folder is read and rewritten (results.csv: runs of a
    sweep append to one table); where folders cannot be locked, nothing is waited for."""

    def __init__(self, folder):
        self.folder, self.fd = folder, None

    def __enter__(self):
        try:
            self.fd = lock_folder(self.folder)[0]
        except OSError:
            pass  # unlocked: the rewrite itself then names the folder if it cannot be written
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # releases the lock


class RunLock:
    """An exclusive claim on one run name in a folder: <folder>/<name>.lock holds the owner's pid
    and an OS lock that dies with the process (even under kill -9), so the lock of a dead run is
    taken over, and a second process asking for a live run is refused naming the first."""

    def __init__(self, folder, name):
        self.path, self.name, self.fd = os.path.join(folder, f"{name}.lock"), name, None

    def acquire(self):
        """Take the lock; returns the pid of a dead previous holder whose lock was taken over, or None."""
        try:
            import fcntl
        except ImportError:  # no flock (Windows): the pid file alone
            fcntl = None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            owner = self._owner(fd)
            try:
                if fcntl is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        raise
                    except OSError:  # a file system without flock (some NFS, Lustre): the pid file alone
                        fcntl = None
                if fcntl is None and owner is not None and owner != os.getpid() and pid_alive(owner):
                    raise BlockingIOError
            except BlockingIOError:
                os.close(fd)
                raise ValueError(f"{self.path}: process {owner or '?'} is training run {self.name} now; wait for "
                                 f"it to end, or write elsewhere with --model_path DIR") from None
            # a holder that released between our open and our lock unlinked the file: lock the new one
            if fcntl is None or os.path.exists(self.path) and os.path.samestat(os.fstat(fd), os.stat(self.path)):
                break
            os.close(fd)
        self.fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return owner if owner not in (None, os.getpid()) else None

    @staticmethod
    def _owner(fd):
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            return int(os.read(fd, 32).decode().strip() or "x")
        except (ValueError, OSError):
            return None

    def release(self):
        if self.fd is None:
            return
        try:
            os.remove(self.path)  # while still held: nobody can lock it in between
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


# ----------------------------------------------------------------------------- folders the project owns
# A generated folder (a demo set, a run's pictures) carries a manifest: a JSON object whose "files"
# lists every file written into it. It may be replaced only while every file in it is listed, so a
# file a user put there, a foreign folder, a file or a link at its path is never deleted.

def tree_files(root):
    """Sorted '/'-separated relative paths of everything under root that is not a folder (files and
    links, never followed); empty folders leave no trace."""
    out, stack = [], [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(root, rel) if rel else root) as entries:
            for e in entries:
                path = f"{rel}/{e.name}" if rel else e.name
                (stack if e.is_dir(follow_symlinks=False) else out).append(path)
    return sorted(out)


def read_manifest(root, manifest):
    """The JSON object in root/manifest, or None (absent, unreadable, not an object, root not a folder)."""
    if not os.path.isdir(root):
        return None
    try:
        with open(os.path.join(root, manifest), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _listed(meta):
    files = meta.get("files") if meta else None
    return set(files) if isinstance(files, list) and all(isinstance(f, str) for f in files) else None


# files an operating system leaves in any folder a person opens: neither foreign nor listed
LITTER = (".DS_Store", "Thumbs.db", "desktop.ini")


def _ours(files, listed, manifest):
    return sorted(f for f in set(files) - listed - {manifest} if os.path.basename(f) not in LITTER)


def check_owned(root, manifest, what, writer):
    """A one-line FileExistsError unless root is absent, an empty folder, or a real folder every file
    of which its manifest lists: the only things a writer may replace. what/writer name the folder
    kind and its writer in the message (e.g. 'demo folder', 'the demo generator')."""
    root = os.path.normpath(root)  # 'link/' is the link, not the folder it points to
    if not os.path.lexists(root):
        return
    if os.path.islink(root):
        raise FileExistsError(f"{root} is a symbolic link; refusing to replace it (pass a new path)")
    if not os.path.isdir(root):
        raise FileExistsError(f"{root} is a file, not a {what}; refusing to replace it")
    files = tree_files(root)
    if not files:
        return  # an empty folder (or empty sub-folders only) may be filled
    meta = read_manifest(root, manifest)
    if meta is None:
        kind = f"an unreadable {manifest}" if manifest in files else f"no {manifest}"
        raise FileExistsError(f"{root} holds {len(files)} file(s) and {kind}; refusing to replace a folder "
                              f"{writer} did not create")
    listed = _listed(meta)
    if listed is None:
        raise FileExistsError(f"{root}: its {manifest} has no file list (written by an older version), so files "
                              f"added to it cannot be told apart; refusing to replace it: delete the folder by "
                              f"hand to regenerate it")
    added = _ours(files, listed, manifest)
    if added:
        raise FileExistsError(f"{root} holds {len(added)} file(s) {writer} did not write, e.g. {added[0]}; "
                              f"refusing to replace it (move them out first)")


def new_build_folder(root):
    """A fresh temporary sibling .<name>.tmp-<host>-<pid>-XXXXXXXX of root to build into (readable as the
    umask says), after removing those of dead processes (killed builds; a live pid's may be running)."""
    parent, name = os.path.split(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    pattern = re.compile(rf"\.{re.escape(name)}\.tmp-([A-Za-z0-9_.]+)-(\d+)-[a-z0-9_]{{8}}")
    with os.scandir(parent) as entries:
        for e in entries:
            m = pattern.fullmatch(e.name)
            if m and e.is_dir(follow_symlinks=False) and _dead_here(*m.groups()):
                shutil.rmtree(e.path, ignore_errors=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-{temp_tag()}-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private
    return tmp


def write_manifest(folder, manifest, **fields):
    """folder/manifest listing every file now in folder, with fields beside the list."""
    files = tree_files(folder)
    atomic_write(os.path.join(folder, manifest),
                 lambda f: f.write(json.dumps({**fields, "files": files}, indent=1, sort_keys=True) + "\n"),
                 binary=False)


def replace_owned(new, root, manifest, what, writer):
    """Rename the finished folder new to root. An existing root is checked again (building takes a
    while: files may have been added meanwhile), moved aside, and only its listed files deleted."""
    root = os.path.normpath(root)
    if not os.path.lexists(root):
        os.replace(new, root)  # a non-empty folder created meanwhile makes this fail, not vanish
        return root
    check_owned(root, manifest, what, writer)
    listed = (_listed(read_manifest(root, manifest)) or set()) | {manifest}
    parent, name = os.path.split(os.path.abspath(root))
    trash = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
    old = os.path.join(trash, name)
    os.replace(root, old)
    try:
        os.replace(new, root)
    except BaseException:
        os.replace(old, root)
        os.rmdir(trash)
        raise
    for rel in tree_files(old):  # found on disk: a listed '../x' cannot escape
        if rel in listed or os.path.basename(rel) in LITTER:
            os.remove(os.path.join(old, rel))
    for folder, _, _ in os.walk(trash, topdown=False):
        try:
            os.rmdir(folder)
        except OSError:
            pass  # not empty: something appeared after the check
    if os.path.lexists(trash):
        raise OSError(f"files appeared in {root} while it was being replaced; they are kept in {old}")
    return root
