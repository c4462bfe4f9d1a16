#!/usr/bin/env python3
"""A fake pachd for the pfs:// sink's tests: Pachyderm's PFS API (`pfs_v2.API`)
served from the stubs Pachyderm publishes (python-pachyderm 7.6.0), so the wire
contract the sink is held to is Pachyderm's, not the sidecar's own .proto.

It keeps projects' repos, branches, commits and files in memory and follows
pachd's rules where the sink depends on them: a commit cannot start on a branch
whose head is open, only open commits take files or can be cleared, adding to a
path appends, a commit starts from its parent's files, and every call must carry
the `authn-token` it was started with (if any).

Pessimistic on purpose: each ModifyFile request is applied as it arrives, so a
stream cut midway leaves part of a batch in the commit, the case the sink must
clean up.

With --discard it keeps no file content, only counts it: for benchmarks.

Control channel: one JSON command per line on stdin, one JSON answer per line on
stdout (the first line printed is {"port": N}):
  {"cmd": "state"}                  repos, commits (with the paths each changed), the
                                    files at every branch head (hex), calls per method
                                    since the faults were set, the largest add_file
  {"cmd": "faults", ...}            replaces the faults, resetting their counters:
      "fail": [{"method": "FinishCommit", "nth": 3 | "every": 3,
                "when": "before" | "after", "code": "UNAVAILABLE"}]
          "after" applies the call, then fails it: the answer is lost.
      "cut_modify_file": {"every": 2, "after": 5}
          every 2nd ModifyFile stream fails after applying 5 requests.
      "slow_finish": 0.5            FinishCommit takes this many seconds more.
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
from google.protobuf import empty_pb2, timestamp_pb2

from python_pachyderm.proto.v2.pfs import pfs_pb2, pfs_pb2_grpc

MAX_MESSAGE = 20 << 20  # pachd's limit


def project_of(repo):
    return repo.project.name or "default"


class Commit:
    def __init__(self, cid, key, branch, parent, description):
        self.id = cid
        self.key = key  # (project, repo)
        self.branch = branch
        self.parent = parent  # a Commit or None
        self.description = description
        self.files = dict(parent.files) if parent else {}  # path -> tuple of bytes
        self.changed = []  # paths added or deleted since start (or the last clear)
        self.finishing = None
        self.error = ""

    def proto(self):
        project, repo = self.key
        r = pfs_pb2.Repo(name=repo, type="user", project=pfs_pb2.Project(name=project))
        return pfs_pb2.Commit(id=self.id, repo=r, branch=pfs_pb2.Branch(repo=r, name=self.branch))


class Faults:
    def __init__(self, spec=None):
        spec = spec or {}
        self.fail = spec.get("fail", [])
        self.cut = spec.get("cut_modify_file")
        self.slow_finish = float(spec.get("slow_finish", 0))
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
        self.repos = {}  # (project, name) -> {"type": str, "branches": {name: Commit}}
        self.commits = {}  # id -> Commit, in creation order
        self.faults = Faults()
        self.max_piece = 0  # the largest add_file seen: pieces must stay well under 20 MiB

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
            found = self.commits.get(commit.id)
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
            parent = repo["branches"].get(request.branch.name)
            if parent is not None and parent.finishing is None:
                context.abort(grpc.StatusCode.UNKNOWN, f"parent commit {parent.id} has not been finished")
            commit = Commit(uuid.uuid4().hex, key, request.branch.name, parent, request.description)
            self.commits[commit.id] = commit
            repo["branches"][request.branch.name] = commit
        self.leave("StartCommit", n, context)
        return commit.proto()

    def ModifyFile(self, request_iterator, context):
        n = self.enter("ModifyFile", context)
        cut_after = self.faults.cut_after(n)
        commit = None
        for i, request in enumerate(request_iterator):
            if cut_after is not None and i == cut_after:
                context.abort(grpc.StatusCode.UNAVAILABLE, f"injected: ModifyFile stream {n} cut after {i} requests")
            with self.lock:
                body = request.WhichOneof("body")
                if body == "set_commit":
                    commit = self.open_commit(request.set_commit, context)
                    continue
                if commit is None:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "set_commit must come first")
                if commit.finishing is not None:
                    context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"commit {commit.id} has already finished")
                if body == "add_file":
                    path = request.add_file.path
                    piece = request.add_file.raw.value
                    self.max_piece = max(self.max_piece, len(piece))
                    self.bytes_received += len(piece)
                    if self.discard:
                        continue
                    commit.files[path] = commit.files.get(path, ()) + (piece,)
                elif body == "delete_file":
                    path = request.delete_file.path
                    if self.discard:
                        continue
                    commit.files.pop(path, None)
                else:
                    context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{body} is not faked")
                commit.changed.append(path)
        self.leave("ModifyFile", n, context)
        return empty_pb2.Empty()

    def ClearCommit(self, request, context):
        n = self.enter("ClearCommit", context)
        with self.lock:
            commit = self.open_commit(request.commit, context)
            commit.files = dict(commit.parent.files) if commit.parent else {}
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
            commit.finishing = timestamp_pb2.Timestamp()
            commit.finishing.GetCurrentTime()
            commit.error = request.error
        self.leave("FinishCommit", n, context)
        return empty_pb2.Empty()

    def InspectCommit(self, request, context):
        n = self.enter("InspectCommit", context)
        with self.lock:
            commit = self.commit(request.commit, context)
            info = pfs_pb2.CommitInfo(commit=commit.proto(), description=commit.description, error=commit.error)
            if commit.parent is not None:
                info.parent_commit.CopyFrom(commit.parent.proto())
            if commit.finishing is not None:
                info.finishing.CopyFrom(commit.finishing)
                info.finished.CopyFrom(commit.finishing)
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
                    "description": c.description,
                    "finished": c.finishing is not None,
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
                            "files": {path: b"".join(chunks).hex() for path, chunks in head.files.items()},
                        }
                        for name, head in repo["branches"].items()
                    },
                }
                for key, repo in self.repos.items()
            ]
        return {"repos": repos, "commits": commits, "calls": dict(self.faults.calls), "max_piece": self.max_piece,
                "bytes_received": self.bytes_received}


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
