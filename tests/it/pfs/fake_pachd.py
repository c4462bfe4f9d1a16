#!/usr/bin/env python3
"""A fake pachd for the pfs:// sink's tests: Pachyderm's PFS API (`pfs_v2.API`)
served from the stubs Pachyderm publishes (python-pachyderm 7.6.0), so the wire
contract the sink is held to is Pachyderm's, not the sidecar's own .proto.

It keeps projects' repos, branches, commits and files in memory and follows
pachd 2.x's rules where the sink depends on them (src/server/pfs/server/ of
pachyderm/pachyderm; behaviour modelled, no code taken):

- FinishCommit only marks a commit *finishing* (server_commit.go finishCommit);
  pachd's master later validates it and marks it *finished* (master.go
  compactAndValidateCommit), here `finish_delay` seconds later and never before
  its base: a path that is both a file and a directory finishes it with error
  "file / directory path collision (PATH)" (fileset/validator.go CheckIndex). A
  commit finished with `error` by its writer skips validation. InspectCommit with
  `wait` FINISHING or FINISHED blocks until then (waitForFinishingOrFinished).
- A commit's files are its base's plus its own changes, where the base is the
  nearest ancestor without `error` (server_file.go getFileset): an errored
  commit's files are left out of its descendants. Adding to a path appends.
- StartCommit fails with "parent commit ... has not been finished" while the
  branch head is open, not yet finishing (linkParent); a finishing head is fine.
- ModifyFile naming a commit id needs it open; naming only a branch joins the
  branch head if it is open, and otherwise makes a one-off commit: the whole
  stream is applied at its end, atomically, as a new commit on the head of that
  moment, already finishing (server_file.go modifyFile / oneOffModifyFile).
- ClearCommit fails with "cannot clear finished commit" once finishing;
  descriptions are stored as sent (FinishCommit's replaces it if not empty).
- Every call must carry the `authn-token` the fake was started with (if any).
- Commit sets (server_commitset.go): a run's commits in every repo share the input
  commit's id, and a commit is named by its repo and id. A "pipeline" (control
  channel) makes its output commit in the commit set of each input commit as that
  commit starts (pachd propagates branches in the same transaction), open, and
  fills and finishes it `delay` seconds after the input commit is finished.
  InspectCommitSet lists the set's commits at once, or with `wait` streams each
  once finished, the finished ones first (inspectCommitSet).
- GetFile streams a file in pieces of at most GET_FILE_PIECE bytes; WalkFile
  streams the commit's directories and files from the root, paths starting `/`.

Pessimistic on purpose: each ModifyFile request into an open commit is applied as
it arrives, so a stream cut midway leaves part of a batch in the commit, the case
the sink must clean up.

With --discard it keeps no file content but the sidecar's marker files, only
counts it: for benchmarks.

Control channel: one JSON command per line on stdin, one JSON answer per line on
stdout (the first line printed is {"port": N}):
  {"cmd": "state"}                  repos, commits (with the paths each changed, whether
                                    finishing, finished, and the error), the files at
                                    every branch head (hex), calls per method
                                    since the faults were set, the largest add_file
  {"cmd": "faults", ...}            replaces the faults, resetting their counters:
      "fail": [{"method": "FinishCommit", "nth": 3 | "every": 3,
                "when": "before" | "after", "code": "UNAVAILABLE"}]
          "after" applies the call, then fails it: the answer is lost.
      "cut_modify_file": {"every": 2, "after": 5}
          every 2nd ModifyFile stream fails after applying 5 requests.
      "slow_finish": 0.5            FinishCommit takes this many seconds more.
      "finish_delay": 0.3           a commit is finished this long after it started
                                    finishing (default 0.01)
  {"cmd": "start_commit", "repo": "r", "branch": "b"}  starts a commit as another
                                    client would (project default), answers {"id": ...}
  {"cmd": "finish_commit", "id": "..."}  finishes it
  {"cmd": "pipeline", "input": "spout", "output": "edges", "delay": 0.3, "error": ""}
                                    a pipeline from repo `input` (its master branch) to
                                    repo `output`: each output file is an input file
                                    upper-cased (the sidecars' markers left out); with
                                    `error`, its commits finish with that error
  {"cmd": "put_file", "repo": "r", "path": "p", "size": N}  commits a file of N bytes
                                    as another client would, answers {"id": ...}: piece
                                    k of 1 MiB holds bytes (31 k + j) % 256, j its index
  {"cmd": "token", "token": "t"}    the token calls must carry from now on (null: none)
  {"cmd": "restart", "down_for": 0.5}  stops serving (connections drop) and serves
                                    again on the same port, state kept, as pachd
                                    does after a restart
  {"cmd": "quit"}
"""

import argparse
import json
import sys
import threading
import time
import uuid
from concurrent import futures

import grpc
from google.protobuf import empty_pb2, timestamp_pb2, wrappers_pb2

from python_pachyderm.proto.v2.pfs import pfs_pb2, pfs_pb2_grpc

MAX_MESSAGE = 20 << 20  # pachd's limit
DEFAULT_FINISH_DELAY = 0.01
MARKER_DIR = ".spout-sidecar/"
GET_FILE_PIECE = 1 << 20


def project_of(repo):
    return repo.project.name or "default"


def now_timestamp():
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


class Commit:
    def __init__(self, cid, key, branch, parent, description):
        self.id = cid
        self.key = key  # (project, repo)
        self.branch = branch
        self.parent = parent  # a Commit or None
        # How far the parent had got when this commit started: "finishing" shows a
        # writer streaming a batch while the commit before it is validated.
        self.parent_at_start = parent and ("finished" if parent.finished else "finishing")
        self.description = description
        self.ops = []  # (path, piece) adds and (path, None) deletes since start (or the last clear)
        self.by_path = {}  # the same ops by path, for reading one file
        self.changed = []  # paths added or deleted since start (or the last clear)
        self.finishing = None  # Timestamps, as pachd reports them
        self.finished = None
        self.ready_at = None  # when the master may finish it
        self.error = ""
        self.total = None  # its files once finished without error
        self.dirs = None  # with them, the directories above them (see path_collision)

    def proto(self):
        project, repo = self.key
        r = pfs_pb2.Repo(name=repo, type="user", project=pfs_pb2.Project(name=project))
        return pfs_pb2.Commit(id=self.id, repo=r, branch=pfs_pb2.Branch(repo=r, name=self.branch))

    def name(self):
        return f"{self.key[1]}@{self.id}"

    def base(self):
        """The nearest ancestor without error: what this commit's files build on."""
        base = self.parent
        while base is not None and base.error:
            base = base.parent
        return base

    def files(self):
        """path -> tuple of pieces: the base's files with this commit's changes."""
        if self.total is not None:
            return self.total
        base = self.base()
        files = dict(base.files()) if base else {}
        for path, piece in self.ops:
            if piece is None:
                files.pop(path, None)
            else:
                files[path] = files.get(path, ()) + (piece,)
        return files

    def file(self, path):
        """One path's pieces, or None: files()[path] without building every file."""
        if self.total is not None:
            return self.total.get(path)
        base = self.base()
        chunks = base.file(path) if base else None
        for piece in self.by_path.get(path, ()):
            chunks = None if piece is None else (chunks or ()) + (piece,)
        return chunks

    def add(self, path, piece):
        self.ops.append((path, piece))
        self.by_path.setdefault(path, []).append(piece)
        self.changed.append(path)


def parents(path):
    """The directories above a path: "a/b/c" -> "a", "a/b"."""
    parts = path.strip("/").split("/")
    return ["/".join(parts[:depth]) for depth in range(1, len(parts))]


def path_collision(files, dirs, changed):
    """pachd's validation of a commit's files, for the paths the commit changed: one
    under a path that is a file, or one that other files are under (`dirs`: every
    directory above a file, to the first file found under it)."""
    for path in sorted({path.strip("/") for path in changed}):
        if path not in files:
            continue
        if path in dirs:
            return f"file / directory path collision (/{dirs[path]})"
        if any(parent in files for parent in parents(path)):
            return f"file / directory path collision (/{path})"
    return ""


class Faults:
    def __init__(self, spec=None):
        spec = spec or {}
        self.fail = spec.get("fail", [])
        self.cut = spec.get("cut_modify_file")
        self.slow_finish = float(spec.get("slow_finish", 0))
        self.finish_delay = float(spec.get("finish_delay", DEFAULT_FINISH_DELAY))
        self.calls = {}
        self.lock = threading.Lock()

    def count(self, method):
        with self.lock:
            self.calls[method] = self.calls.get(method, 0) + 1
            return self.calls[method]

    @staticmethod
    def hits(rule, n):
        return rule.get("nth") == n or (rule.get("every") and n % rule["every"] == 0)

    def failure(self, method, n, when):
        for rule in self.fail:
            if rule["method"] == method and rule.get("when", "before") == when and self.hits(rule, n):
                return getattr(grpc.StatusCode, rule.get("code", "UNAVAILABLE"))
        return None

    def cut_after(self, n):
        if self.cut and self.hits(self.cut, n):
            return self.cut.get("after", 0)
        return None


class Pachd(pfs_pb2_grpc.APIServicer):
    def __init__(self, token, discard):
        self.token = token
        self.discard = discard  # for benchmarks: count file bytes, keep none
        self.bytes_received = 0
        self.lock = threading.RLock()
        self.changes = threading.Condition(self.lock)  # notified when a commit finishes (or starts to)
        self.repos = {}  # (project, name) -> {"type": str, "branches": {name: Commit}}
        self.commits = {}  # (project, repo, id) -> Commit, in creation order
        self.pipelines = []  # {"input": key, "output": key, "delay": s, "error": str}
        self.faults = Faults()
        self.pending = []  # finishing commits the master has yet to finish, in order
        self.max_piece = 0  # the largest add_file seen: pieces must stay well under 20 MiB
        threading.Thread(target=self.master, daemon=True).start()

    # --- helpers -------------------------------------------------------------

    def enter(self, method, context):
        """Counts the call, checks the token, injects a failure planned before it."""
        got = dict(context.invocation_metadata()).get("authn-token")
        if self.token is not None and got != self.token:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "the provided auth token is invalid")
        n = self.faults.count(method)
        code = self.faults.failure(method, n, "before")
        if code is not None:
            context.abort(code, f"injected: {method} call {n} fails before it is applied")
        return n

    def leave(self, method, n, context):
        code = self.faults.failure(method, n, "after")
        if code is not None:
            context.abort(code, f"injected: {method} call {n} applied, its answer lost")

    def repo(self, repo, context):
        key = (project_of(repo), repo.name)
        if key not in self.repos:
            context.abort(grpc.StatusCode.NOT_FOUND, f"repo {key[0]}/{key[1]} not found")
        return key, self.repos[key]

    def commit(self, commit, context):
        if commit.id:
            repo = commit.repo if commit.repo.name else commit.branch.repo
            found = self.commits.get((project_of(repo), repo.name, commit.id))
        else:
            _, repo = self.repo(commit.branch.repo, context)
            found = repo["branches"].get(commit.branch.name)
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"commit {commit.id or commit.branch.name} not found")
        return found

    def open_commit(self, commit, context):
        found = self.commit(commit, context)
        if found.finishing is not None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"commit {found.id} has already finished")
        return found

    def start(self, key, repo, branch, description, context):
        """A new commit at the head of `branch`: linkParent's rule on the head."""
        parent = repo["branches"].get(branch)
        if parent is not None and parent.finishing is None:
            context.abort(grpc.StatusCode.UNKNOWN, f"parent commit {parent.name()} has not been finished")
        commit = self.add_commit(uuid.uuid4().hex, key, repo, branch, parent, description)
        for pipeline in self.pipelines:
            if pipeline["input"] == key and branch == "master":
                self.start_job(pipeline, commit)
        return commit

    def add_commit(self, cid, key, repo, branch, parent, description):
        commit = Commit(cid, key, branch, parent, description)
        self.commits[(key[0], key[1], cid)] = commit
        repo["branches"][branch] = commit
        return commit

    def start_job(self, pipeline, input_commit):
        """The pipeline's output commit in the input commit's commit set, open now,
        filled and finished by a job once the input commit is finished."""
        key = pipeline["output"]
        repo = self.repos[key]
        output = self.add_commit(input_commit.id, key, repo, "master", repo["branches"].get("master"), "")
        threading.Thread(target=self.run_job, args=(pipeline, input_commit, output), daemon=True).start()

    def run_job(self, pipeline, input_commit, output):
        with self.lock:
            while input_commit.finished is None:
                self.changes.wait(timeout=0.05)
        time.sleep(pipeline["delay"])
        with self.lock:
            base = output.base()
            for path in base.files() if base else {}:
                output.add(path, None)
            if not pipeline["error"]:
                for path, pieces in input_commit.files().items():
                    if not path.startswith(MARKER_DIR):
                        output.add(path, b"".join(pieces).upper())
            self.finishing(output, pipeline["error"])

    def info(self, commit):
        info = pfs_pb2.CommitInfo(commit=commit.proto(), description=commit.description, error=commit.error)
        if commit.parent is not None:
            info.parent_commit.CopyFrom(commit.parent.proto())
        if commit.finishing is not None:
            info.finishing.CopyFrom(commit.finishing)
        if commit.finished is not None:
            info.finished.CopyFrom(commit.finished)
        return info

    def finishing(self, commit, error):
        commit.finishing = now_timestamp()
        commit.ready_at = time.monotonic() + self.faults.finish_delay
        commit.error = error
        self.pending.append(commit)
        self.changes.notify_all()

    def apply(self, commit, body, request):
        """One add_file or delete_file of a ModifyFile stream, into `commit`."""
        if body == "add_file":
            path = request.add_file.path
            piece = request.add_file.raw.value
            self.max_piece = max(self.max_piece, len(piece))
            self.bytes_received += len(piece)
            if self.keeps(path):
                commit.add(path, piece)
        elif body == "delete_file":
            if self.keeps(request.delete_file.path):
                commit.add(request.delete_file.path, None)

    def keeps(self, path):
        """--discard keeps only the sidecar's marker files, which it reads back."""
        return not self.discard or path.startswith(MARKER_DIR)

    def master(self):
        """pachd's master: finishes finishing commits once their delay has passed and
        their base is finished, validating those finished without an error."""
        while True:
            with self.lock:
                now = time.monotonic()
                for commit in list(self.pending):
                    base = commit.base()
                    if commit.ready_at > now or (not commit.error and base is not None and base.finished is None):
                        continue
                    if not commit.error:
                        files = commit.files()
                        dirs = dict(base.dirs) if base is not None and base.dirs is not None else {}
                        for path in commit.changed:
                            for parent in parents(path):
                                dirs.setdefault(parent, path.strip("/"))
                        commit.error = path_collision(files, dirs, commit.changed)
                        if not commit.error:
                            commit.total, commit.dirs = files, dirs
                            if base is not None:
                                base.total = base.dirs = None  # recomputed if ever read: memory stays flat
                    commit.finished = now_timestamp()
                    self.pending.remove(commit)
                    self.changes.notify_all()
            time.sleep(0.002)

    # --- the API -------------------------------------------------------------

    def InspectRepo(self, request, context):
        n = self.enter("InspectRepo", context)
        with self.lock:
            key, _ = self.repo(request.repo, context)
        self.leave("InspectRepo", n, context)
        return pfs_pb2.RepoInfo(repo=pfs_pb2.Repo(name=key[1], type="user", project=pfs_pb2.Project(name=key[0])))

    def CreateRepo(self, request, context):
        n = self.enter("CreateRepo", context)
        key = (project_of(request.repo), request.repo.name)
        with self.lock:
            if key in self.repos and not request.update:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"repo {key[0]}/{key[1]} already exists")
            self.repos.setdefault(key, {"type": request.repo.type or "user", "branches": {}})
        self.leave("CreateRepo", n, context)
        return empty_pb2.Empty()

    def InspectBranch(self, request, context):
        n = self.enter("InspectBranch", context)
        with self.lock:
            _, repo = self.repo(request.branch.repo, context)
            head = repo["branches"].get(request.branch.name)
            if head is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"branch {request.branch.name} not found")
        self.leave("InspectBranch", n, context)
        return pfs_pb2.BranchInfo(branch=request.branch, head=head.proto())

    def StartCommit(self, request, context):
        n = self.enter("StartCommit", context)
        with self.lock:
            key, repo = self.repo(request.branch.repo, context)
            commit = self.start(key, repo, request.branch.name, request.description, context)
        self.leave("StartCommit", n, context)
        return commit.proto()

    def ModifyFile(self, request_iterator, context):
        n = self.enter("ModifyFile", context)
        cut_after = self.faults.cut_after(n)
        commit = None
        one_off = None  # set_commit named a branch whose head is not open: (key, repo, branch, requests)
        for i, request in enumerate(request_iterator):
            if cut_after is not None and i == cut_after:
                context.abort(grpc.StatusCode.UNAVAILABLE, f"injected: ModifyFile stream {n} cut after {i} requests")
            body = request.WhichOneof("body")
            with self.lock:
                if i == 0:
                    if body != "set_commit":
                        context.abort(grpc.StatusCode.UNKNOWN, "first message must be a commit")
                    target = request.set_commit
                    if target.id:
                        commit = self.open_commit(target, context)
                    else:
                        key, repo = self.repo(target.branch.repo, context)
                        head = repo["branches"].get(target.branch.name)
                        if head is not None and head.finishing is None:
                            commit = head  # joins the open head
                        else:
                            one_off = (key, repo, target.branch.name, [])
                    continue
                if body not in ("add_file", "delete_file"):
                    context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{body} is not faked")
                if one_off is not None:
                    one_off[3].append((body, request))
                    continue
                if commit.finishing is not None:
                    context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"commit {commit.id} has already finished")
                self.apply(commit, body, request)
        if one_off is not None:
            key, repo, branch, requests = one_off
            with self.lock:
                commit = self.start(key, repo, branch, "", context)
                for body, request in requests:
                    self.apply(commit, body, request)
                self.finishing(commit, "")
        self.leave("ModifyFile", n, context)
        return empty_pb2.Empty()

    def ClearCommit(self, request, context):
        n = self.enter("ClearCommit", context)
        with self.lock:
            commit = self.commit(request.commit, context)
            if commit.finishing is not None:
                context.abort(grpc.StatusCode.UNKNOWN, "cannot clear finished commit")
            commit.ops = []
            commit.by_path = {}
            commit.changed = []
        self.leave("ClearCommit", n, context)
        return empty_pb2.Empty()

    def FinishCommit(self, request, context):
        n = self.enter("FinishCommit", context)
        with self.lock:
            self.open_commit(request.commit, context)
        time.sleep(self.faults.slow_finish)
        with self.lock:
            commit = self.open_commit(request.commit, context)
            if request.description:
                commit.description = request.description
            self.finishing(commit, request.error)
        self.leave("FinishCommit", n, context)
        return empty_pb2.Empty()

    def GetFile(self, request, context):
        n = self.enter("GetFile", context)
        with self.lock:
            commit = self.commit(request.file.commit, context)
            # openCommit: a finishing commit is read once finished.
            self.wait_for(commit, pfs_pb2.FINISHED if commit.finishing is not None else pfs_pb2.STARTED, context)
            chunks = commit.file(request.file.path)
            if chunks is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"file {request.file.path} not found in commit {commit.name()}")
        self.leave("GetFile", n, context)
        for chunk in chunks:
            for at in range(0, len(chunk), GET_FILE_PIECE):
                yield wrappers_pb2.BytesValue(value=chunk[at : at + GET_FILE_PIECE])

    def WalkFile(self, request, context):
        n = self.enter("WalkFile", context)
        with self.lock:
            commit = self.commit(request.file.commit, context)
            self.wait_for(commit, pfs_pb2.FINISHED if commit.finishing is not None else pfs_pb2.STARTED, context)
            files = {"/" + path.strip("/"): sum(len(piece) for piece in pieces) for path, pieces in commit.files().items()}
            proto = commit.proto()
        self.leave("WalkFile", n, context)
        dirs = {"/"} | {"/" + parent for path in files for parent in parents(path)}
        # As pachd's walkFile: the path itself and what is under it, NOT_FOUND if none.
        under = "/" + request.file.path.strip("/")
        walked = [p for p in sorted(dirs | set(files)) if under == "/" or p == under or p.startswith(under + "/")]
        if not walked:
            context.abort(grpc.StatusCode.NOT_FOUND, f"file {request.file.path} not found in commit {commit.name()}")
        for path in walked:
            kind = pfs_pb2.FILE if path in files else pfs_pb2.DIR
            yield pfs_pb2.FileInfo(file=pfs_pb2.File(commit=proto, path=path), file_type=kind, size_bytes=files.get(path, 0))

    def InspectCommitSet(self, request, context):
        n = self.enter("InspectCommitSet", context)
        with self.lock:
            members = [c for c in self.commits.values() if c.id == request.commit_set.id]
            if not members:
                context.abort(grpc.StatusCode.NOT_FOUND, f"commit set {request.commit_set.id} not found")
            finished = [self.info(c) for c in members if c.finished is not None or not request.wait]
        self.leave("InspectCommitSet", n, context)
        yield from finished
        if request.wait:
            for commit in members:
                if commit.finished is None:
                    with self.lock:
                        self.wait_for(commit, pfs_pb2.FINISHED, context)
                        info = self.info(commit)
                    yield info

    def wait_for(self, commit, state, context):
        """Blocks (the lock released) until `commit` has reached `state`."""
        reached = {
            pfs_pb2.FINISHING: lambda: commit.finishing is not None,
            pfs_pb2.FINISHED: lambda: commit.finished is not None,
        }.get(state, lambda: True)
        while not reached():
            if not context.is_active():
                context.abort(grpc.StatusCode.CANCELLED, "the call ended while waiting for the commit")
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"commit {commit.id} is not finished yet")
            self.changes.wait(timeout=0.05 if remaining is None else min(0.05, remaining))

    def InspectCommit(self, request, context):
        n = self.enter("InspectCommit", context)
        with self.lock:
            commit = self.commit(request.commit, context)
            self.wait_for(commit, request.wait, context)
            info = self.info(commit)
        self.leave("InspectCommit", n, context)
        return info

    # --- the control channel -------------------------------------------------

    def state(self):
        with self.lock:
            commits = [
                {
                    "id": c.id,
                    "project": c.key[0],
                    "repo": c.key[1],
                    "branch": c.branch,
                    "parent": c.parent.id if c.parent else None,
                    "parent_at_start": c.parent_at_start,
                    "description": c.description,
                    "finishing": c.finishing is not None,
                    "finished": c.finished is not None,
                    "error": c.error,
                    "changed": c.changed,
                }
                for c in self.commits.values()
            ]
            repos = [
                {
                    "project": key[0],
                    "name": key[1],
                    "type": repo["type"],
                    "branches": {
                        name: {
                            "head": head.id,
                            "files": {path: b"".join(chunks).hex() for path, chunks in head.files().items()},
                        }
                        for name, head in repo["branches"].items()
                    },
                }
                for key, repo in self.repos.items()
            ]
        return {"repos": repos, "commits": commits, "calls": dict(self.faults.calls), "max_piece": self.max_piece,
                "bytes_received": self.bytes_received}


class Refuse:
    """A stand-in for a call's context, for the control channel: an abort is an error."""

    def abort(self, code, message):
        raise SystemExit(f"fake pachd: {code}: {message}")


def serve(pachd, port):
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        options=[("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)],
    )
    pfs_pb2_grpc.add_APIServicer_to_server(pachd, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if bound == 0:
        raise SystemExit(f"fake pachd: cannot listen on 127.0.0.1:{port}")
    server.start()
    return server, bound


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default=None, help="the authn-token every call must carry")
    parser.add_argument("--discard", action="store_true", help="keep no file content (benchmarks)")
    args = parser.parse_args()
    pachd = Pachd(args.token, args.discard)
    server, port = serve(pachd, args.port)
    print(json.dumps({"port": port}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        cmd = command["cmd"]
        if cmd == "state":
            answer = pachd.state()
        elif cmd == "faults":
            pachd.faults = Faults(command)
            answer = {"ok": True}
        elif cmd == "start_commit":
            with pachd.lock:
                key = ("default", command["repo"])
                answer = {"id": pachd.start(key, pachd.repos[key], command["branch"], "", Refuse()).id}
        elif cmd == "finish_commit":
            with pachd.lock:
                pachd.finishing(next(c for c in pachd.commits.values() if c.id == command["id"]), "")
            answer = {"ok": True}
        elif cmd == "pipeline":
            with pachd.lock:
                output = ("default", command["output"])
                pachd.repos.setdefault(output, {"type": "user", "branches": {}})
                pipeline = {"input": ("default", command["input"]), "output": output,
                            "delay": float(command.get("delay", 0.1)), "error": command.get("error") or ""}
                pachd.pipelines.append(pipeline)
            answer = {"ok": True}
        elif cmd == "put_file":
            with pachd.lock:
                key = ("default", command["repo"])
                repo = pachd.repos.setdefault(key, {"type": "user", "branches": {}})
                commit = pachd.start(key, repo, "master", "", Refuse())
                size = int(command["size"])
                for k, at in enumerate(range(0, size, GET_FILE_PIECE)):
                    piece = (bytes((31 * k + j) % 256 for j in range(256)) * (GET_FILE_PIECE // 256))
                    commit.add(command["path"], piece[: min(GET_FILE_PIECE, size - at)])
                pachd.finishing(commit, "")
            answer = {"id": commit.id}
        elif cmd == "token":
            pachd.token = command["token"]
            answer = {"ok": True}
        elif cmd == "restart":
            server.stop(grace=0).wait()
            time.sleep(float(command.get("down_for", 0.5)))
            server, _ = serve(pachd, port)
            answer = {"ok": True}
        elif cmd == "quit":
            break
        else:
            answer = {"error": f"unknown command {cmd}"}
        print(json.dumps(answer), flush=True)
    server.stop(grace=0)


if __name__ == "__main__":
    main()
