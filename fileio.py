"""Files that are never left half-written and never taken from their owner: atomic writes (several
files of one output together), output checks made before any work (an existing file is replaced only
by an output of its own kind), temporaries of dead processes, the one-writer lock of a run, and
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


def _write_temp(path, write, binary):
    """write(f) on <path>.tmp-<host>-<pid> beside path, flushed to disk; returns that temporary. Any
    failure removes it and is one OSError naming path and the cause."""
    tmp = f"{path}.tmp-{temp_tag()}"
    f = None
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp, "wb" if binary else "w", **({} if binary else {"newline": "", "encoding": "utf-8"})) as raw:
            f = _RecordingFile(raw)
            write(f)
            raw.flush()
            os.fsync(raw.fileno())
        return tmp
    except (OSError, RuntimeError) as e:
        if os.path.lexists(tmp):
            os.remove(tmp)
        cause = f.error if f is not None and f.error is not None else e
        if not isinstance(cause, OSError):
            raise
        raise OSError(f"cannot write {path}: {cause.strerror or cause}") from None
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise


def atomic_write(path, write, binary=True):
    """Call write(f) on <path>.tmp-<host>-<pid> beside path, flush it to disk, then rename it over path: a
    crash or a full disk never leaves half a file, and the previous file stays as it was until the
    new one is complete. Any failure is one OSError naming path and the cause."""
    return write_together([(path, write, binary)])[0]


def write_together(outputs):
    """[(path, write, binary)] of one output of several files (extract.py's features and their image
    list): every file is written to its temporary (atomic_write's) first, then each is renamed over its
    path; if a rename fails, the paths already replaced get their previous file back. So the files
    change together or not at all. Returns the paths."""
    outputs = [(os.fspath(p), w, b) for p, w, b in outputs]
    temps, kept, done = [], [], []  # done: (path, its previous file kept aside, or None)
    try:
        for path, write, binary in outputs:
            temps.append(_write_temp(path, write, binary))
        for (path, _, _), tmp in zip(outputs, temps):
            kept.append(_keep_aside(path))
            try:
                os.replace(tmp, path)
            except OSError as e:
                raise OSError(f"cannot write {path}: {e.strerror or e}") from None
            done.append((path, kept[-1]))
    except BaseException:
        for path, old in reversed(done):  # the previous files back: no part of the output changed
            if old is None:
                os.remove(path)
            else:
                os.replace(old, path)
        raise
    finally:
        for leftover in temps + kept:
            if leftover is not None and os.path.lexists(leftover):
                os.remove(leftover)
    return [p for p, _, _ in outputs]


def _keep_aside(path):
    """A second name (<path>.old-<host>-<pid>) for path's current file, so that it can be put back; None
    if there is none. A hard link where the file system has them (path itself stays in place), else a
    copy."""
    if not os.path.lexists(path):
        return None
    old = f"{path}.old-{temp_tag()}"
    if os.path.lexists(old):
        os.remove(old)
    try:
        os.link(path, old)
    except OSError:
        shutil.copy2(path, old)
    return old


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


# what atomic_write (tmp) and write_together (old) leave when killed: one of this project's outputs, then
# the writer's host and pid
_TEMP_NAME = re.compile(r".+\.(?:pth|json|csv|png|npy|onnx|pt)\.(?:tmp|old)-([A-Za-z0-9_.]+)-(\d+)")


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


# what a file is, by its first bytes: for the refusal of an output over it
FILE_MAGIC = ((b"PK\x03\x04", "a checkpoint or other zip archive"), (b"\x80", "a checkpoint or other pickle"),
              (b"\x93NUMPY", "a NumPy array"), (b"\x89PNG", "an image"), (b"\xff\xd8\xff", "an image"),
              (b"GIF8", "an image"), (b"II*\x00", "an image"), (b"MM\x00*", "an image"), (b"BM", "an image"))
CHECKPOINT_ENDINGS = (".pth", ".pt", ".t", ".tar", ".ckpt")


class OutputKind:
    """A kind of file output (test_mine.py's JSON, results.csv, extract.py's features ...): what it is
    called, and recognise(path) -> True if an existing file is an earlier output of this kind, told
    from its content (reading no more of a large file than it must). Every kind made is known to
    describe()."""
    known = []

    def __init__(self, what, recognise):
        self.what, self.recognise = what, recognise
        OutputKind.known.append(self)


def describe(path):
    """What an existing file is, in a few words: an output kind's name, else what its first bytes say."""
    for kind in OutputKind.known:
        if _recognised(kind, path):
            return kind.what
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return "a file that cannot be read"
    what = next((what for magic, what in FILE_MAGIC if head.startswith(magic)), None)
    if what is None and os.path.basename(path).lower().endswith(CHECKPOINT_ENDINGS):
        what = "a checkpoint"
    return what or "a file of some other kind"


def _recognised(kind, path):
    try:
        return bool(kind.recognise(path))
    except (OSError, ValueError, UnicodeDecodeError):
        return False


def check_replaceable(path, flag, kind):
    """The one rule for every file output: an existing path may be replaced only by an output of its own
    kind (an earlier result of the same writer, recognised from its content), never a checkpoint, a file
    of a dataset, a results table or a log, nor anything else a user had there."""
    if os.path.lexists(path) and not (os.path.isfile(path) and _recognised(kind, path)):
        what = "a symbolic link" if os.path.islink(path) else describe(path)
        raise ValueError(f"{flag} {path}: that file exists and is {what}, not {kind.what}; refusing to replace "
                         f"it: give another file name")


def check_output_file(path, flag, kind, inputs=(), input_dirs=()):
    """An output file of kind (OutputKind) that can be written and is none of the inputs: not a
    checkpoint being read (inputs) nor an existing file under a data folder (input_dirs), and an
    existing file only if check_replaceable allows it. Checked before any work, so that nothing is
    evaluated for a result that cannot be kept, and nothing the user had is replaced by a result."""
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
    check_replaceable(path, flag, kind)
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
