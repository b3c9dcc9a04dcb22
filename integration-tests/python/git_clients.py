#!/usr/bin/env python3
"""Exercise a Git smart-HTTP server with Git clients other than the `git` CLI.

Clients: dulwich (pure Python) and libgit2 through pygit2. Both are used for
everything, including making the local commits, so this script needs no `git`
binary at all.

Steps, in order, each checked; the first failure prints one line
`FAIL <client> step <x> (<what>): <reason>` to stderr and exits 1:

  a. first push: make a local repository with two commits on `main` and push
     `refs/heads/main` to a repository that does not exist yet (the gitcluster
     gateway creates it on first push); every pushed ref must be reported ok;
  b. clone it into a fresh directory; `main` there must be the pushed commit;
  c. push a third commit from the first repository, fetch into the clone; the
     clone's `refs/remotes/origin/main` must have advanced to it;
  d. shallow clone (depth 1): `main` must be the third commit, the repository
     must be marked shallow and hold exactly one commit object;
  e. print `OK <client> <commit-id>` (the commit id of main).

Deterministic: fixed author/committer, fixed dates, fixed content, so the commit
ids are the same on every run and with both clients. The user's Git
configuration is kept out (HOME points into the work directory; libgit2's
system/global/XDG search paths point at an empty directory).

Usage:
  git_clients.py --client dulwich --url http://127.0.0.1:8080/default/x/y.git --work /tmp/w
  git_clients.py --client pygit2  --url ... --work ... [--token SECRET]

`--token` is sent as the password of HTTP Basic (user `git`, or `--user`):
dulwich sends it on every request; libgit2 sends it from a RemoteCallbacks
credentials callback after a 401 challenge. With `--auth bearer` dulwich sends
`Authorization: Bearer <token>` instead, through `http.extraHeader` in the
private `<work>/home/.gitconfig` (porcelain.fetch takes no headers argument);
libgit2 cannot send a custom Authorization header, so pygit2 refuses it.

`--settle SECONDS` pauses after each push (default 0). It exists to tell a
read-after-write race on the server apart from a real failure.

Needs: dulwich and pygit2 >= 1.14 (libgit2 >= 1.7, for `depth=` in
clone_repository); see requirements.txt beside this file.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import time
from pathlib import Path

AUTHOR_NAME = "Gitcluster Test"
AUTHOR_EMAIL = "test@gitcluster.invalid"
BASE_TIME = 1_700_000_000  # 2023-11-14T22:13:20Z
TZ_OFFSET_MIN = 0
BRANCH = "main"
REF = "refs/heads/main"
TRACKING_REF = "refs/remotes/origin/main"

# (message, {path: content}) applied on top of the previous tree, in order.
COMMITS = [
    ("first commit\n", {"README.md": "gitcluster python client test\n"}),
    ("second commit\n", {"src/one.txt": "one\n"}),
    ("third commit\n", {"src/two.txt": "two\n"}),
]


class StepFailed(Exception):
    pass


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def check(cond: bool, reason: str) -> None:
    if not cond:
        raise StepFailed(reason)


def write_files(workdir: Path, files: dict[str, str]) -> None:
    for rel, content in files.items():
        p = workdir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)


# --------------------------------------------------------------------------- dulwich


class DulwichClient:
    name = "dulwich"

    def __init__(self, args: argparse.Namespace) -> None:
        from dulwich import porcelain
        from dulwich.repo import Repo

        self.porcelain = porcelain
        self.Repo = Repo
        self.url = args.url
        self.kwargs: dict[str, object] = {}
        if args.token is not None:
            if args.auth == "basic":
                self.kwargs = {"username": args.user, "password": args.token}
            else:
                # porcelain.fetch takes no pool manager or headers, but every porcelain
                # call reads http.extraHeader from the config stack, which includes
                # the private $HOME/.gitconfig that main() set up in the work directory.
                from dulwich.config import ConfigFile

                cfg = ConfigFile()
                cfg.set((b"http",), b"extraHeader", f"Authorization: Bearer {args.token}".encode())
                cfg.path = os.path.join(os.environ["HOME"], ".gitconfig")
                cfg.write_to_path()
        self.err = io.BytesIO()  # dulwich's progress/sideband output

    def last_output(self) -> str:
        return one_line(self.err.getvalue().decode("utf-8", "replace"))[-300:]

    def init_repo(self, path: Path):
        r = self.porcelain.init(str(path))
        r.refs.set_symbolic_ref(b"HEAD", REF.encode())
        cfg = r.get_config()
        cfg.set((b"remote", b"origin"), b"url", self.url.encode())
        cfg.set(
            (b"remote", b"origin"),
            b"fetch",
            b"+refs/heads/*:refs/remotes/origin/*",
        )
        cfg.write_to_path()
        return r

    def commit(self, repo, index: int) -> str:
        message, files = COMMITS[index]
        write_files(Path(repo.path), files)
        self.porcelain.add(repo, [str(Path(repo.path) / f) for f in files])
        ident = f"{AUTHOR_NAME} <{AUTHOR_EMAIL}>".encode()
        ts = BASE_TIME + 60 * index
        sha = self.porcelain.commit(
            repo,
            message=message.encode(),
            author=ident,
            committer=ident,
            author_timestamp=ts,
            author_timezone=TZ_OFFSET_MIN * 60,
            commit_timestamp=ts,
            commit_timezone=TZ_OFFSET_MIN * 60,
            sign=False,
            no_verify=True,
        )
        return sha.decode()

    def push(self, repo) -> None:
        result = self.porcelain.push(
            repo,
            self.url,
            [f"{REF}:{REF}".encode()],
            outstream=self.err,
            errstream=self.err,
            **self.kwargs,
        )
        status = result.ref_status or {}
        check(REF.encode() in status, f"server reported no status for {REF}: {status!r}")
        bad = {k.decode(): v for k, v in status.items() if v is not None}
        check(not bad, f"server rejected refs: {bad}")

    def clone(self, path: Path, depth: int | None = None):
        return self.porcelain.clone(
            self.url,
            str(path),
            errstream=self.err,
            depth=depth,
            **self.kwargs,
        )

    def fetch(self, repo) -> None:
        self.porcelain.fetch(repo, "origin", errstream=self.err, **self.kwargs)

    @staticmethod
    def ref(repo, name: str) -> str | None:
        try:
            return repo.refs[name.encode()].decode()
        except KeyError:
            return None

    @staticmethod
    def head(repo) -> str | None:
        try:
            return repo.head().decode()
        except KeyError:
            return None

    @staticmethod
    def has_object(repo, sha: str) -> bool:
        return sha.encode() in repo.object_store

    @staticmethod
    def commit_objects(repo) -> list[str]:
        out = []
        for sha in repo.object_store:
            if repo.object_store[sha].type_name == b"commit":
                out.append(sha.decode())
        return out

    @staticmethod
    def shallow(repo) -> set[str]:
        return {s.decode() for s in repo.get_shallow()}

    @staticmethod
    def close(repo) -> None:
        repo.close()


# --------------------------------------------------------------------------- pygit2


class Pygit2Client:
    name = "pygit2"

    def __init__(self, args: argparse.Namespace) -> None:
        import pygit2

        self.pygit2 = pygit2
        self.url = args.url
        self.token = args.token
        self.user = args.user
        if args.token is not None and args.auth != "basic":
            raise StepFailed("pygit2/libgit2 cannot send a Bearer header; use --auth basic")
        # Keep the machine's git configuration out of libgit2.
        empty = Path(args.work) / "empty-config-dir"
        empty.mkdir(parents=True, exist_ok=True)
        levels = pygit2.enums.ConfigLevel
        for level in (levels.SYSTEM, levels.XDG, levels.GLOBAL, levels.PROGRAMDATA):
            pygit2.settings.search_path[level] = str(empty)
        self.sig_cls = pygit2.Signature
        self.last_messages: list[str] = []

    def last_output(self) -> str:
        return one_line(" | ".join(self.last_messages))[-300:]

    def callbacks(self):
        """A fresh RemoteCallbacks for one network operation."""
        pygit2 = self.pygit2
        outer = self

        class Callbacks(pygit2.RemoteCallbacks):
            def __init__(self) -> None:
                super().__init__()
                self.cred_calls = 0
                self.ref_status: dict[str, str | None] = {}

            def credentials(self, url, username_from_url, allowed_types):
                self.cred_calls += 1
                if outer.token is None:
                    raise StepFailed(f"server asked for credentials ({url}) and no --token given")
                if self.cred_calls > 2:
                    raise StepFailed(f"server rejected the token ({url})")
                if not allowed_types & pygit2.enums.CredentialType.USERPASS_PLAINTEXT:
                    raise StepFailed(f"server wants credential types {allowed_types!r}")
                return pygit2.UserPass(outer.user, outer.token)

            def sideband_progress(self, string):
                outer.last_messages.append(string)

            def push_update_reference(self, refname, message):
                self.ref_status[refname] = message

        return Callbacks()

    def signature(self, index: int):
        return self.sig_cls(AUTHOR_NAME, AUTHOR_EMAIL, BASE_TIME + 60 * index, TZ_OFFSET_MIN)

    def init_repo(self, path: Path):
        repo = self.pygit2.init_repository(str(path), bare=False, initial_head=BRANCH)
        repo.remotes.create("origin", self.url)
        return repo

    def commit(self, repo, index: int) -> str:
        message, files = COMMITS[index]
        workdir = Path(repo.workdir)
        write_files(workdir, files)
        for rel in files:
            repo.index.add(rel)
        repo.index.write()
        tree = repo.index.write_tree()
        parents = [] if repo.head_is_unborn else [repo.head.target]
        sig = self.signature(index)
        oid = repo.create_commit(REF, sig, sig, message, tree, parents)
        return str(oid)

    def push(self, repo) -> None:
        cb = self.callbacks()
        repo.remotes["origin"].push([f"{REF}:{REF}"], callbacks=cb)
        check(REF in cb.ref_status, f"server reported no status for {REF}: {cb.ref_status!r}")
        bad = {k: v for k, v in cb.ref_status.items() if v is not None}
        check(not bad, f"server rejected refs: {bad}")

    def clone(self, path: Path, depth: int | None = None):
        # `depth` needs libgit2 >= 1.7 (pygit2 >= 1.14).
        return self.pygit2.clone_repository(
            self.url, str(path), callbacks=self.callbacks(), depth=depth or 0
        )

    def fetch(self, repo) -> None:
        repo.remotes["origin"].fetch(callbacks=self.callbacks())

    @staticmethod
    def ref(repo, name: str) -> str | None:
        ref = repo.references.get(name)
        return None if ref is None else str(ref.resolve().target)

    @staticmethod
    def head(repo) -> str | None:
        if repo.head_is_unborn:
            return None
        return str(repo.head.target)

    def has_object(self, repo, sha: str) -> bool:
        return sha in repo.odb

    def commit_objects(self, repo) -> list[str]:
        commit_type = self.pygit2.enums.ObjectType.COMMIT
        out = []
        for oid in repo.odb:
            if repo.odb.read(oid)[0] == commit_type:
                out.append(str(oid))
        return out

    @staticmethod
    def shallow(repo) -> set[str]:
        f = Path(repo.path) / "shallow"
        return set(f.read_text().split()) if f.exists() else set()

    @staticmethod
    def close(repo) -> None:
        repo.free()


# --------------------------------------------------------------------------- steps


def run(args: argparse.Namespace) -> str:
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    src, clone_dir, shallow_dir = work / "src", work / "clone", work / "shallow"
    for d in (src, clone_dir, shallow_dir):
        if d.exists():
            shutil.rmtree(d)

    step = "setup"
    client = None
    try:
        client = {"dulwich": DulwichClient, "pygit2": Pygit2Client}[args.client](args)

        def say(msg: str) -> None:
            if not args.quiet:
                print(f"[{args.client}] {step}: {msg}", flush=True)

        step = "a (first push)"
        t0 = time.monotonic()
        repo = client.init_repo(src)
        ids = [client.commit(repo, 0), client.commit(repo, 1)]
        check(client.ref(repo, REF) == ids[1], f"local {REF} is not the second commit")
        client.push(repo)
        say(f"pushed {REF} {ids[1]} (2 commits) in {time.monotonic() - t0:.2f}s")
        time.sleep(args.settle)

        step = "b (clone)"
        t0 = time.monotonic()
        cl = client.clone(clone_dir)
        got = client.ref(cl, TRACKING_REF)
        check(got == ids[1], f"clone's {TRACKING_REF} is {got}, expected {ids[1]}")
        got = client.ref(cl, REF)
        check(got == ids[1], f"clone's {REF} is {got}, expected {ids[1]}")
        got = client.head(cl)
        check(got == ids[1], f"clone's HEAD is {got}, expected {ids[1]}")
        check(client.has_object(cl, ids[0]), f"clone lacks the first commit {ids[0]}")
        say(f"cloned, main={ids[1]} in {time.monotonic() - t0:.2f}s")

        step = "c (push again, fetch)"
        t0 = time.monotonic()
        ids.append(client.commit(repo, 2))
        client.push(repo)
        time.sleep(args.settle)
        before = client.ref(cl, TRACKING_REF)
        client.fetch(cl)
        got = client.ref(cl, TRACKING_REF)
        check(
            got == ids[2],
            f"after fetch {TRACKING_REF} is {got} (was {before}), expected {ids[2]}",
        )
        check(client.has_object(cl, ids[2]), f"fetched commit {ids[2]} is not in the clone")
        say(f"pushed {ids[2]}, fetch moved origin/main {before[:12]}..{ids[2][:12]} "
            f"in {time.monotonic() - t0:.2f}s")
        client.close(cl)
        client.close(repo)

        step = "d (shallow clone)"
        t0 = time.monotonic()
        sh = client.clone(shallow_dir, depth=1)
        got = client.ref(sh, REF)
        check(got == ids[2], f"shallow clone's {REF} is {got}, expected {ids[2]}")
        commits = client.commit_objects(sh)
        check(commits == [ids[2]], f"shallow clone holds commits {commits}, expected only {ids[2]}")
        check(not client.has_object(sh, ids[1]), "shallow clone holds the parent commit")
        shallow = client.shallow(sh)
        check(shallow == {ids[2]}, f"shallow file lists {sorted(shallow)}, expected {ids[2]}")
        client.close(sh)
        say(f"depth-1 clone has exactly {ids[2]} in {time.monotonic() - t0:.2f}s")
        return ids[2]
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 - one line, whatever it is
        if isinstance(e, StepFailed):
            reason = str(e)
        elif type(e).__name__ == "NotGitRepository" and not str(e):
            # dulwich raises a bare NotGitRepository for an HTTP 404.
            reason = "NotGitRepository: server answered HTTP 404 (repository not found)"
        else:
            reason = f"{type(e).__name__}: {e}"
        extra = client.last_output() if client is not None else ""
        if extra and not isinstance(e, StepFailed):
            reason += f" [client output: {extra}]"
        print(f"FAIL {args.client} step {step}: {one_line(reason)}", file=sys.stderr, flush=True)
        sys.exit(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--client", required=True, choices=["dulwich", "pygit2"])
    p.add_argument("--url", required=True,
                   help="smart-HTTP URL of a repository that does not exist yet, "
                        "e.g. http://127.0.0.1:8080/default/some/repo.git")
    p.add_argument("--work", required=True, help="scratch directory (created if missing)")
    p.add_argument("--token", default=None,
                   help="client token: HTTP Basic password (default) or Bearer token")
    p.add_argument("--auth", choices=["basic", "bearer"], default="basic",
                   help="how to send --token (bearer: dulwich only)")
    p.add_argument("--user", default="git", help="HTTP Basic user name sent with --token")
    p.add_argument("--settle", type=float, default=0.0, metavar="SECONDS",
                   help="pause after each push before the next request (diagnosis of "
                        "read-after-write races; default 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the final line")
    args = p.parse_args()

    # Keep the user's git configuration out: both libraries read $HOME/.gitconfig.
    home = Path(args.work).resolve() / "home"
    home.mkdir(parents=True, exist_ok=True)
    os.environ["HOME"] = str(home)
    os.environ["XDG_CONFIG_HOME"] = str(home / ".config")
    os.environ["GIT_CONFIG_NOSYSTEM"] = "1"
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
                "GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM", "GIT_PROTOCOL"):
        os.environ.pop(var, None)

    commit_id = run(args)
    print(f"OK {args.client} {commit_id}", flush=True)


if __name__ == "__main__":
    main()
