#!/usr/bin/env python3
"""store_check: the fault campaign's view of the daemon's store and outputs.

tests/campaign.sh calls it; each subcommand prints one line (or one JSON
object) and exits 0 when the property holds, 1 when it does not.

  integrity STATE [--live]   PRAGMA integrity_check of STATE/svdllmd.db. By
                             default on a copy of the database and its WAL
                             (what a restart would recover, without touching
                             the daemon's files); --live opens the real one
                             read-only (a daemon may be running).
  job STATE ID [--live]      the job row and its layers rows, each row with
                             what its file holds now (size, sha256, inode,
                             mtime): JSON.
  snap SNAP STATE ID [--live]
                             no finished layer lost or redone: every layer row
                             recorded in the JSON file SNAP by an earlier call
                             is still there with the same sha256, its file has
                             the same inode, mtime and content, and every row
                             matches its file. Then SNAP gets the current rows.
                             A done or cancelled job's work directory is
                             emptied by design (schema/protocol.md,
                             Leftovers): its files may be gone then, but a
                             file still there must be intact and unrewritten.
                             Prints "ok ROWS" or what broke.
  compare REF OUT            every file of the output directory OUT equals the
                             one in REF byte for byte, compression.json minus
                             its wall-clock fields.
  get PATH                   the value at PATH (dot-separated keys) of the
                             JSON on stdin ('' when absent or null).

Only the standard library: python3's sqlite3 module (the sqlite3 CLI may be
absent), hashlib, json."""
import hashlib
import json
import os
import shutil
import sqlite3
import sys
import tempfile


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Db:
    """A read-only connection: to a copy of db + WAL, or (live) to the real one."""

    def __init__(self, state, live):
        self.tmp = None
        path = os.path.join(state, "svdllmd.db")
        if not os.path.exists(path):
            raise FileNotFoundError(path)
        if live:
            self.conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=30)
        else:
            self.tmp = tempfile.mkdtemp(prefix="store_check.")
            for suffix in ("", "-wal"):
                if os.path.exists(path + suffix):
                    shutil.copyfile(path + suffix, os.path.join(self.tmp, "svdllmd.db" + suffix))
            self.conn = sqlite3.connect(os.path.join(self.tmp, "svdllmd.db"), timeout=30)

    def close(self):
        self.conn.close()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def integrity(state, live):
    db = Db(state, live)
    try:
        rows = [r[0] for r in db.conn.execute("PRAGMA integrity_check")]
    finally:
        db.close()
    print("; ".join(rows))
    return 0 if rows == ["ok"] else 1


def job_view(state, job_id, live):
    db = Db(state, live)
    try:
        db.conn.row_factory = sqlite3.Row
        j = db.conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if j is None:
            return None
        view = {k: j[k] for k in ("id", "state", "error", "work_dir", "out", "n_layers", "layers_resumed")}
        view["rows"] = []
        for r in db.conn.execute("SELECT layer, file, size, sha256 FROM layers WHERE job_id = ? ORDER BY layer",
                                 (job_id,)):
            row = {"layer": r["layer"], "file": r["file"], "size": r["size"], "sha256": r["sha256"]}
            path = os.path.join(view["work_dir"], r["file"])
            try:
                st = os.stat(path)
                row.update(exists=True, actual_size=st.st_size, actual_sha256=sha256_file(path), ino=st.st_ino,
                           mtime_ns=st.st_mtime_ns)
            except OSError:
                row.update(exists=False)
            row["intact"] = bool(row["exists"] and row["actual_size"] == row["size"] and
                                 row["actual_sha256"] == row["sha256"])
            view["rows"].append(row)
        return view
    finally:
        db.close()


def snap(snap_path, state, job_id, live):
    view = job_view(state, job_id, live)
    if view is None:
        print("job %d: no row in the store" % job_id)
        return 1
    old = {}
    if os.path.exists(snap_path):
        with open(snap_path) as f:
            old = json.load(f)
    problems = []
    # An ended job can never run again; the runner empties its directory.
    emptied = view["state"] in ("done", "cancelled")
    now = {str(r["layer"]): r for r in view["rows"]}
    for layer, r in sorted(now.items(), key=lambda kv: int(kv[0])):
        if not r["intact"] and not (emptied and not r["exists"]):
            problems.append("layer %s row does not match its file %s" % (layer, r["file"]))
    for layer, o in sorted(old.items(), key=lambda kv: int(kv[0])):
        r = now.get(layer)
        if r is None:
            problems.append("layer %s row (committed earlier) is gone" % layer)
        elif r["sha256"] != o["sha256"]:
            problems.append("layer %s row changed sha256 (redone)" % layer)
        elif emptied and not r["exists"]:
            pass
        elif r.get("ino") != o.get("ino") or r.get("mtime_ns") != o.get("mtime_ns"):
            problems.append("layer %s file %s was rewritten (redone)" % (layer, r["file"]))
    merged = dict(old)
    for layer, r in now.items():
        if layer not in merged and r["intact"]:
            merged[layer] = {k: r.get(k) for k in ("sha256", "ino", "mtime_ns", "file")}
    with open(snap_path, "w") as f:
        json.dump(merged, f)
    if problems:
        print("; ".join(problems))
        return 1
    print("ok %d" % len(now))
    return 0


WALL_CLOCK = ("seconds", "solver_seconds", "gflop")


def normalized_report(path):
    with open(path) as f:
        rep = json.load(f)
    for m in (rep.get("matrices") or {}).values():
        for k in WALL_CLOCK:
            m.pop(k, None)
    rep.pop("timing", None)
    if isinstance(rep.get("perplexity"), dict):
        rep["perplexity"].pop("speed", None)
    return json.dumps(rep, sort_keys=True)


def compare(ref, out):
    try:
        a, b = sorted(os.listdir(ref)), sorted(os.listdir(out))
    except OSError as e:
        print(str(e))
        return 1
    if a != b:
        print("files differ: reference %s, output %s" % (a, b))
        return 1
    for name in a:
        p, q = os.path.join(ref, name), os.path.join(out, name)
        if name == "compression.json":
            same = normalized_report(p) == normalized_report(q)
        else:
            same = sha256_file(p) == sha256_file(q)
        if not same:
            print("%s differs from the reference" % name)
            return 1
    print("ok %d files" % len(a))
    return 0


def get(path):
    try:
        v = json.load(sys.stdin)
    except ValueError:
        print("")
        return 1
    for k in path.split("."):
        v = v.get(k) if isinstance(v, dict) else None
    print("" if v is None else (json.dumps(v) if isinstance(v, (dict, list)) else
                                str(v).lower() if isinstance(v, bool) else str(v)))
    return 0


def main(argv):
    live = "--live" in argv
    args = [a for a in argv[1:] if a != "--live"]
    try:
        if len(args) == 2 and args[0] == "integrity":
            return integrity(args[1], live)
        if len(args) == 3 and args[0] == "job":
            v = job_view(args[1], int(args[2]), live)
            print(json.dumps(v))
            return 0 if v else 1
        if len(args) == 4 and args[0] == "snap":
            return snap(args[1], args[2], int(args[3]), live)
        if len(args) == 3 and args[0] == "compare":
            return compare(args[1], args[2])
        if len(args) == 2 and args[0] == "get":
            return get(args[1])
    except (OSError, sqlite3.Error, ValueError) as e:
        print("%s: %s" % (type(e).__name__, e))
        return 1
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
