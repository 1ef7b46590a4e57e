"""Feature data and rank requests for a model, made up from its shapes: many
users, so their keys spread over every slot range of a Redis Cluster (the
golden "small" set has 13), every item of the vocabulary, and requests that
read both.  Deterministic (a seed).

    synth_data.py MODEL OUT_DIR [--users N] [--requests N] [--candidates N]

writes OUT_DIR/items.jsonl, users.jsonl and requests.jsonl (one rank body
a line, users of the file, `candidates` distinct items each).
"""
import argparse
import json
import os
import random
import struct


def model_meta(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))["__metadata__"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    m = model_meta(a.model)
    rnd = random.Random(a.seed)
    vocab, tag_vocab = int(m["item_vocab"]), int(m["tag_vocab"])
    num_tags, mm, max_len = int(m["num_tags"]), int(m["mm_in"]), int(m["max_len"])
    fields = m["context_fields"].split(",") if m.get("context_fields") else []
    fvocab = [int(v) for v in m["context_vocab"].split(",")] if fields else []
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "items.jsonl"), "w") as f:
        for i in range(1, vocab):
            tags = [rnd.randrange(tag_vocab) for _ in range(rnd.randrange(num_tags + 1))]
            emb = [round(rnd.gauss(0, 1), 4) for _ in range(mm)]
            # The field's name is the records' (proto/records.h), whatever the width.
            f.write(json.dumps({"item_id": i, "item_tags": tags, "item_emb_d128": emb}) + "\n")
    with open(os.path.join(a.out, "users.jsonl"), "w") as f:
        for u in range(a.users):
            seq = [rnd.randrange(1, vocab) for _ in range(rnd.randrange(1, max_len + 1))]
            f.write(json.dumps({"user_id": "u%d" % u, "item_seq": seq}) + "\n")
    k = min(a.candidates, vocab - 1)
    with open(os.path.join(a.out, "requests.jsonl"), "w") as f:
        for _ in range(a.requests):
            cands = []
            for item in rnd.sample(range(1, vocab), k):
                c = {"item_id": item}
                for name, v in zip(fields, fvocab):
                    c[name] = rnd.randrange(v)
                cands.append(c)
            f.write(json.dumps({"user_id": "u%d" % rnd.randrange(a.users),
                                "candidates": cands}, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
