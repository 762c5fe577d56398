#!/usr/bin/env python3
"""Reads the KV events of `lmcache serve --kv-events` (or of vLLM) and prints one JSON line per event.

A cross-check of the wire format written against vLLM's examples/online_serving/kv_events_subscriber.py, with pyzmq
and msgpack (Debian: python3-zmq python3-msgpack) instead of msgspec. Messages are [topic, 8-byte big-endian sequence,
msgpack payload]; a payload is [ts, [events], data_parallel_rank] with tagged-array events. A gap in the sequence is
filled from the replay socket: the request is the 8-byte start sequence, the answers [sequence, payload] up to the end
marker [-1, b""]. The replay socket is a DEALER (sending the REQ envelope's empty frame itself): a REQ socket, as vLLM's
example has, can only read the first answer of a replay.

  scripts/kv_events_subscriber.py --endpoint tcp://127.0.0.1:5557 --replay tcp://127.0.0.1:5558 --from-seq 0 --count 10
"""
import argparse
import json
import sys

import msgpack
import zmq

STORED = ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium")
REMOVED = ("block_hashes", "medium")


def decode_event(raw):
    """A tagged array (msgspec array_like) or a tagged map (newer vLLM) as a dict with a "type" key."""
    if isinstance(raw, dict):
        return dict(raw)
    tag, fields = raw[0], raw[1:]
    names = STORED if tag == "BlockStored" else REMOVED if tag == "BlockRemoved" else ()
    event = {"type": tag}
    event.update(zip(names, fields))
    return event


def decode_batch(payload):
    batch = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    if isinstance(batch, dict):
        return batch.get("ts"), [decode_event(e) for e in batch.get("events", [])], batch.get("data_parallel_rank")
    return batch[0], [decode_event(e) for e in batch[1]], batch[2] if len(batch) > 2 else None


def emit(seq, payload, source):
    ts, events, rank = decode_batch(payload)
    for event in events:
        print(json.dumps({"seq": seq, "source": source, "ts": ts, "dp_rank": rank, **event}), flush=True)


def replay(sock, start, timeout_ms):
    """Every buffered batch from `start` on, as (seq, payload) pairs, up to the end marker."""
    sock.send_multipart([b"", start.to_bytes(8, "big", signed=True)])
    out = []
    while sock.poll(timeout_ms):
        _, seq_bytes, payload = sock.recv_multipart()
        seq = int.from_bytes(seq_bytes, "big", signed=True)
        if seq == -1 and not payload:
            return out
        out.append((seq, payload))
    raise TimeoutError(f"no end of replay within {timeout_ms} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:5557")
    parser.add_argument("--replay", default=None, help="the replay (ROUTER) endpoint")
    parser.add_argument("--topic", default="", help="topic prefix to subscribe to (default: all)")
    parser.add_argument("--from-seq", type=int, default=None, help="replay from this sequence number first")
    parser.add_argument("--count", type=int, default=0, help="stop after this many batches (0: run until interrupted)")
    parser.add_argument("--timeout", type=float, default=0, help="stop after this many seconds without a message (0: never)")
    args = parser.parse_args()

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.connect(args.endpoint)
    sub.setsockopt_string(zmq.SUBSCRIBE, args.topic)
    rep = None
    if args.replay:
        rep = ctx.socket(zmq.DEALER)
        rep.connect(args.replay)

    batches = 0
    last_seq = -1
    if args.from_seq is not None:
        if rep is None:
            parser.error("--from-seq needs --replay")
        for seq, payload in replay(rep, args.from_seq, 5000):
            emit(seq, payload, "replay")
            last_seq = seq
            batches += 1

    while args.count == 0 or batches < args.count:
        if not sub.poll(int(args.timeout * 1000) if args.timeout else None):
            break
        _, seq_bytes, payload = sub.recv_multipart()
        seq = int.from_bytes(seq_bytes, "big")
        if seq <= last_seq:
            continue  # already seen through replay
        if last_seq >= 0 and seq > last_seq + 1 and rep is not None:
            for rseq, rpayload in replay(rep, last_seq + 1, 5000):
                if last_seq < rseq < seq:
                    emit(rseq, rpayload, "replay")
                    last_seq = rseq
                    batches += 1
        emit(seq, payload, "live")
        last_seq = seq
        batches += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
