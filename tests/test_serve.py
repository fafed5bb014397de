"""The policy server on loopback: protocol, validation, batching, isolation, limits, eval through it.

Checkpoints are freshly initialized (tests/serve_helpers.py): serving is about transport and
bookkeeping, and random weights make actions depend on the observation without any training.
torch runs on one thread here: on a shared 2-core machine its thread pool otherwise spins.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from lbm.errors import LbmError
from lbm.schema import Observation
from lbm.serve import LocalSource, PolicyServer, ServerConfig
from lbm_client import ChunkBroker, Client, ClientError, ServerError, WireError, fetch_metrics, health, packb, unpackb
from serve_helpers import INSTRUCTION, fresh_checkpoint

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_ckpts")
    return {
        "flow": fresh_checkpoint(root / "flow", "flow", "tiny", horizon=8),
        "discrete": fresh_checkpoint(root / "discrete", "discrete", "tiny", horizon=4, seed=1),
        "camera": fresh_checkpoint(
            root / "camera", "flow", "tiny", horizon=4, cameras=("corner",), image_size=16, cnn_widths=(4,)
        ),
    }


def _load(path):
    from lbm.train import load_policy

    return load_policy(path)


@pytest.fixture(scope="module")
def flow_server(ckpts):
    with PolicyServer(_load(ckpts["flow"]), ServerConfig(port=0, metrics_every_s=0)) as server:
        yield server


@pytest.fixture(scope="module")
def discrete_server(ckpts):
    # A long max_wait so that requests of concurrent clients are reliably batched together.
    with PolicyServer(_load(ckpts["discrete"]), ServerConfig(port=0, max_wait_ms=300, metrics_every_s=0)) as server:
        yield server


def _obs(x: float = 0.0, **extra) -> dict:
    return {"state": np.full(39, x, np.float32), "prompt": INSTRUCTION, **extra}


def _wait_until(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# ---- wire format ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.zeros((4, 5, 3), np.uint8),
        np.array([True, False]),
        np.array(["ab", "c"]),
        np.float32(1.5),
        {"nested": [np.arange(3, dtype=np.int64), "text", 1, 2.5, None]},
    ],
)
def test_wire_round_trip(value):
    out = unpackb(packb(value))
    ref = value if not isinstance(value, dict) else value["nested"][0]
    got = out if not isinstance(value, dict) else out["nested"][0]
    assert np.array_equal(got, ref) and np.asarray(got).dtype == np.asarray(ref).dtype
    if isinstance(value, dict):
        assert out["nested"][1:] == ["text", 1, 2.5, None]


def test_wire_matches_openpi_layout_and_rejects_bad_arrays():
    import msgpack

    arr = np.arange(8, dtype=np.float32).reshape(2, 4)
    # openpi_client.msgpack_numpy writes exactly this map (bytes keys, dtype.str, shape list).
    raw = msgpack.unpackb(packb({"actions": arr}), raw=False)
    assert raw["actions"] == {b"__ndarray__": True, b"data": arr.tobytes(), b"dtype": "<f4", b"shape": [2, 4]}
    bad_len = msgpack.packb({b"__ndarray__": True, b"data": b"\0" * 7, b"dtype": "<f4", b"shape": [2]})
    with pytest.raises(WireError, match="needs 8 bytes"):
        unpackb(bad_len)
    with pytest.raises(WireError, match="not allowed"):
        unpackb(msgpack.packb({b"__ndarray__": True, b"data": b"", b"dtype": "|O", b"shape": [0]}))
    with pytest.raises(WireError, match="not a valid msgpack"):
        unpackb(b"\xc1garbage")


# ---- protocol --------------------------------------------------------------------------------------


def test_metadata_reply_health_and_metrics(flow_server):
    assert health(flow_server.url)
    with Client(flow_server.url) as client:
        meta = client.metadata
        assert meta["server"] == "lbm" and meta["action_horizon"] == 8 and meta["action_dim"] == 4
        assert INSTRUCTION in meta["instructions"] and "metaworld-sawyer" in meta["embodiments"]
        before = fetch_metrics(flow_server.url)["requests"]
        for x in (0.0, 0.1, 0.2):
            reply = client.infer(_obs(x))
        assert reply["actions"].shape == (8, 4) and reply["actions"].dtype == np.float32
        assert np.all(np.abs(reply["actions"]) <= 1.0)  # clipped to Meta-World's bounds
        assert set(reply["server_timing"]) >= {"infer_ms", "queue_ms", "total_ms", "batch_size"}
        assert reply["embodiment"] == "metaworld-sawyer"
    metrics = fetch_metrics(flow_server.url)
    assert metrics["requests"] == before + 3
    lat = metrics["latency_ms"]
    assert lat["n"] >= 3 and 0 < lat["p50"] <= lat["p95"] <= lat["p99"]


BAD_REQUESTS = [
    ({"state": np.zeros(3, np.float32), "prompt": INSTRUCTION}, "needs (39,)"),
    ({"state": np.zeros(39, np.int32), "prompt": INSTRUCTION}, "float32 numpy array"),
    ({"state": np.full(39, np.nan, np.float32), "prompt": INSTRUCTION}, "NaN, infinite"),
    ({"state": np.r_[np.zeros(38), np.inf].astype(np.float32), "prompt": INSTRUCTION}, "indices [38]"),
    # float64 beyond float32's range becomes inf in the cast: validated after it, so refused.
    ({"state": np.r_[np.zeros(38), 1e39], "prompt": INSTRUCTION}, "beyond float32's range at indices [38]"),
    ({"state": [0.0] * 38 + [-1e300], "prompt": INSTRUCTION}, "beyond float32's range at indices [38]"),
    ({}, "the request is empty"),
    ({"reset": True, "seed": -1}, "non-negative integer"),
    ({"seed": 3}, "together with 'reset'"),
    ({**_obs(), "prompt": "x" * 1001}, "at most 1000"),
    ({"prompt": INSTRUCTION}, "no 'state'"),
    ({"state": np.zeros(39, np.float32)}, "'prompt'"),
    ({"state": np.zeros(39, np.float32), "prompt": 3}, "'prompt'"),
    ({"stat": np.zeros(39, np.float32), "prompt": INSTRUCTION}, "Did you mean 'state'"),
    ({**_obs(), "embodiment": "franka"}, "Unknown embodiment 'franka'"),
    ({**_obs(), "reset": "yes"}, "'reset' must be a bool"),
    ([1, 2, 3], "msgpack map"),
]


@pytest.mark.parametrize("request_, needle", BAD_REQUESTS, ids=[n for _, n in BAD_REQUESTS])
def test_bad_request_gets_clear_error_and_connection_keeps_working(flow_server, request_, needle):
    with Client(flow_server.url) as client:
        errors_before = fetch_metrics(flow_server.url)["errors_by_kind"].get("bad_request", 0)
        with pytest.raises(
            ServerError, match=needle.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")
        ):
            client.infer(request_)
        assert client.infer(_obs())["actions"].shape == (8, 4)  # same connection, still served
    assert fetch_metrics(flow_server.url)["errors_by_kind"]["bad_request"] == errors_before + 1


def test_raw_frames_text_and_garbage(flow_server):
    from websockets.sync.client import connect

    with connect(flow_server.url, proxy=None) as ws:
        unpackb(ws.recv())  # metadata
        ws.send("hello")
        assert "binary msgpack frame" in ws.recv()
        ws.send(b"\xc1\xc1\xc1")
        assert "not a valid msgpack" in ws.recv()
        ws.send(packb(_obs()))
        assert unpackb(ws.recv())["actions"].shape == (8, 4)


def test_camera_policy_validates_images(ckpts):
    with PolicyServer(_load(ckpts["camera"]), ServerConfig(port=0, metrics_every_s=0)) as server, Client(server.url) as client:
        assert client.metadata["policy"]["cameras"] == ["corner"]
        with pytest.raises(ServerError, match="camera 'corner'"):
            client.infer(_obs())
        with pytest.raises(ServerError, match="uint8"):
            client.infer(_obs(images={"corner": np.zeros((16, 16, 3), np.float32)}))
        good = _obs(images={"corner": np.zeros((16, 16, 3), np.uint8)})
        assert client.infer(good)["actions"].shape == (4, 4)
        with pytest.raises(ServerError, match="send 'reset'"):  # resolution changed mid-episode
            client.infer(_obs(images={"corner": np.zeros((20, 20, 3), np.uint8)}))
        assert client.infer(_obs(images={"corner": np.zeros((20, 20, 3), np.uint8)}, reset=True))["actions"].shape == (4, 4)


# ---- concurrency, isolation, disconnects ---------------------------------------------------------


def test_concurrent_clients_are_batched_and_keep_their_own_history(discrete_server):
    """4 clients at once: one predict_chunk serves several of them, and each keeps its own history.

    The discrete policy decodes by argmax (deterministic), so identical histories must give
    identical actions whichever batch they land in, and a different history must change them.
    """
    url = discrete_server.url
    before = fetch_metrics(url)
    plans = {"a": [0.5, -0.5], "b": [-0.5], "c": [0.5, -0.5], "d": [0.2, 0.9]}
    results: dict[str, list[np.ndarray]] = {}
    barrier = threading.Barrier(len(plans))

    def run(name: str) -> None:
        with Client(url) as client:
            out = []
            steps = plans[name]
            for i in range(2):
                barrier.wait(timeout=30)
                if i < len(steps):
                    out.append(client.infer(_obs(steps[i]))["actions"])
            results[name] = out

    threads = [threading.Thread(target=run, args=(n,)) for n in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert set(results) == set(plans)
    after = fetch_metrics(url)
    assert after["requests"] - before["requests"] == 7
    assert after["max_batch_size"] >= 2, after["batch_size_counts"]
    assert after["batches"] - before["batches"] < 7  # fewer model calls than requests
    np.testing.assert_array_equal(results["a"][1], results["c"][1])  # same history, same actions
    assert not np.array_equal(results["a"][1], results["b"][0])  # same newest obs, other history
    np.testing.assert_array_equal(results["a"][0], results["c"][0])


def test_disconnect_mid_request_leaks_nothing(discrete_server):
    from websockets.sync.client import connect

    for _ in range(3):
        ws = connect(discrete_server.url, proxy=None, legacy=True)
        ws.recv()
        ws.send(packb(_obs(0.3)))
        ws.close()  # gone before the reply
    assert _wait_until(lambda: fetch_metrics(discrete_server.url)["connections_open"] == 0)
    assert _wait_until(lambda: discrete_server.connections == 0)
    with Client(discrete_server.url) as client:
        assert client.infer(_obs())["actions"].shape == (4, 4)


def test_reset_forgets_history(discrete_server):
    with Client(discrete_server.url) as a, Client(discrete_server.url) as fresh:
        a.infer(_obs(0.7))
        with_history = a.infer(_obs(-0.7))["actions"]
        a.reset()
        after_reset = a.infer(_obs(-0.7))["actions"]
        np.testing.assert_array_equal(after_reset, fresh.infer(_obs(-0.7))["actions"])
        assert not np.array_equal(with_history, after_reset)


# ---- safety of the service -----------------------------------------------------------------------


TOKEN = "s3cret-token-0123456789"


def test_token_is_required_when_set(ckpts):
    policy = _load(ckpts["flow"])
    with PolicyServer(policy, ServerConfig(port=0, token=TOKEN, metrics_every_s=0)) as server:
        with pytest.raises(ClientError, match="token"):
            Client(server.url, connect_timeout_s=2)
        with pytest.raises(ClientError, match="token"):
            Client(server.url, token="wrong", connect_timeout_s=2)
        assert health(server.url)  # health checks need no secret
        with pytest.raises(ClientError, match="401"):
            fetch_metrics(server.url)
        with Client(server.url, token=TOKEN) as client:
            assert client.infer(_obs())["actions"].shape == (8, 4)
        with Client(server.url, token=f"  {TOKEN} ") as client:  # the same normalized form on both sides
            assert client.infer(_obs())["actions"].shape == (8, 4)
        assert fetch_metrics(server.url, token=TOKEN)["errors_by_kind"]["unauthorized"] >= 3
        # Two Authorization headers: a clean 400, not a 500 and a traceback (raw HTTP: clients merge headers).
        import socket

        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(
                f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Api-Key {TOKEN}\r\n"
                f"Authorization: Api-Key {TOKEN}\r\nConnection: close\r\n\r\n".encode()
            )
            assert sock.recv(4096).split(b"\r\n")[0].endswith(b"400 Bad Request")


BAD_TOKENS = [
    ("   ", "whitespace"),
    (" " + TOKEN, "whitespace"),
    (TOKEN + "\n", "whitespace"),
    ("a b" * 8, "whitespace"),
    ("short", "at least 16"),
    ("x" * 15, "at least 16"),
]


@pytest.mark.parametrize("token, needle", BAD_TOKENS, ids=[repr(t) for t, _ in BAD_TOKENS])
def test_weak_or_malformed_tokens_are_refused(ckpts, token, needle):
    with pytest.raises(LbmError, match=needle):
        PolicyServer(_load(ckpts["flow"]), ServerConfig(host="0.0.0.0", port=0, token=token))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "robot-server.local"])
def test_exposed_bind_without_token_is_refused(ckpts, host):
    with pytest.raises(LbmError, match="without a token"):
        PolicyServer(_load(ckpts["flow"]), ServerConfig(host=host, port=0))


def test_cli_refuses_exposed_bind_before_loading(tmp_path, capsys):
    from lbm.cli import main

    assert main(["serve", str(tmp_path / "missing"), "--host", "0.0.0.0"]) == 2
    assert "without a token" in capsys.readouterr().err


def test_size_limit_closes_only_the_offender(ckpts):
    from websockets.sync.client import connect

    with PolicyServer(_load(ckpts["flow"]), ServerConfig(port=0, max_message_mb=0.01, metrics_every_s=0)) as server:
        with Client(server.url) as other, Client(server.url) as client:
            with pytest.raises(ClientError, match="at most 0.01 MiB"):  # checked before sending
                client.infer(_obs(prompt="x" * 20_000))
            with connect(server.url, proxy=None, max_size=None) as ws:
                ws.recv()
                ws.send(packb(_obs(prompt="x" * 20_000)))
                with pytest.raises(Exception) as closed:
                    ws.recv(timeout=10)
                assert getattr(getattr(closed.value, "sent", None), "code", None) == 1009
            assert other.infer(_obs())["actions"].shape == (8, 4)
        assert fetch_metrics(server.url)["errors_by_kind"].get("too_big") == 1


# ---- the same policy served and in-process -------------------------------------------------------


def test_served_equals_in_process_flow_with_the_same_episode_seed(ckpts, flow_server):
    """An episode seeded on the server draws the noise it would draw in process: any difference is the transport's."""
    from lbm.serve import RemotePolicy

    local = _load(ckpts["flow"])
    remote = RemotePolicy(flow_server.url)
    assert remote.horizon == 8 and remote.history == local.history
    remote_state, local_state = [remote.reset(seed=123)], [local.reset(seed=123)]
    for x in (0.1, -0.3, 0.6):
        obs = [Observation(state=np.linspace(-1, 1, 39) * x, instruction=INSTRUCTION, embodiment="metaworld-sawyer")]
        served, here = remote.predict_chunk(obs, remote_state), local.predict_chunk(obs, local_state)
        remote_state, local_state = list(served.states), list(here.states)
        assert served.actions.shape == here.actions.shape == (1, 8, 4)
        np.testing.assert_array_equal(served.actions, here.actions)
    # The same through the thin client and the in-process chunk source of the broker.
    with Client(flow_server.url) as client:
        client.reset(seed=7)
        source = LocalSource(local, seed=7)
        for x in (0.2, 0.4):
            np.testing.assert_array_equal(client.infer(_obs(x))["actions"], source.infer(_obs(x))["actions"])
    remote.close()


def test_eval_through_server_matches_in_process(ckpts, discrete_server, tmp_path):
    """`lbm eval --policy NAME=ws://...`: same rollouts as loading the checkpoint in-process."""
    from lbm.eval import records as rec_mod
    from lbm.eval.runner import EvalConfig, run_evaluation

    config = EvalConfig(
        policy=(f"local={ckpts['discrete']}", f"served={discrete_server.url}"),
        tasks="reach-v3",
        trials=2,
        max_steps=12,
        out=tmp_path / "ev",
        progress=False,
        envs_per_worker=4,
    )
    run_evaluation(config)
    df = rec_mod.load_records(tmp_path / "ev").set_index(["policy", "trial"])
    for trial in range(2):
        a, b = df.loc[("local", trial)], df.loc[("served", trial)]
        assert a["init_hash"] == b["init_hash"] and a["steps"] == b["steps"] == 12
        assert a["return"] == b["return"]  # identical actions give bit-identical rewards
        assert a["chunk_calls"] == b["chunk_calls"] == 3


def test_bad_ws_source_is_a_clear_error():
    from lbm.eval.runner import load_policy_spec, parse_policy_specs

    (spec,) = parse_policy_specs(["mine=ws://127.0.0.1:9"])
    assert spec.source == "ws://127.0.0.1:9"
    with pytest.raises(LbmError, match="Cannot connect"):
        load_policy_spec(spec)


# ---- the chunk broker ----------------------------------------------------------------------------


class _CountingSource:
    """Chunks whose entries say which request produced them and which step they are for."""

    def __init__(self, horizon: int = 8, delay_s: float = 0.0):
        self.horizon, self.delay_s, self.seen, self.resets = horizon, delay_s, [], 0

    def infer(self, obs):
        time.sleep(self.delay_s)
        self.seen.append(float(obs["state"][0]))
        k = len(self.seen)
        return {"actions": np.array([[k, t] for t in range(self.horizon)], np.float32)}

    def reset(self, seed=None):
        self.resets += 1


def test_broker_synchronous_runs_execute_steps_then_requests():
    src = _CountingSource()
    broker = ChunkBroker(src, execute_steps=3)
    acts = [broker.act({"state": np.array([step], np.float32)}) for step in range(7)]
    assert [tuple(a) for a in acts] == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (3, 0)]
    assert src.seen == [0, 3, 6] and broker.stats["requests"] == 3


def test_broker_prefetch_skips_the_steps_already_executed():
    src = _CountingSource(delay_s=0.01)
    broker = ChunkBroker(src, execute_steps=4, prefetch_at=1)  # d = 3
    acts = [tuple(broker.act({"state": np.array([step], np.float32)})) for step in range(10)]
    # chunk 1 from obs 0; chunk 2 requested at step 1 (obs 1), used from step 4 starting at index 3.
    assert acts[:4] == [(1, 0), (1, 1), (1, 2), (1, 3)]
    assert acts[4:8] == [(2, 3), (2, 4), (2, 5), (2, 6)]
    assert src.seen[:3] == [0, 1, 5]
    assert broker.stats["prefetched"] >= 2
    broker.reset()
    assert src.resets == 1
    assert tuple(broker.act({"state": np.array([42], np.float32)}))[1] == 0  # fresh chunk from index 0
    broker.close()


def test_broker_refuses_impossible_settings():
    with pytest.raises(ClientError, match="chunk source"):
        ChunkBroker(object(), execute_steps=4)
    with pytest.raises(ClientError, match="prefetch_at"):
        ChunkBroker(_CountingSource(), execute_steps=4, prefetch_at=4)
    broker = ChunkBroker(_CountingSource(horizon=8), execute_steps=6, prefetch_at=2)  # needs 6 + 4 > 8
    for step in range(6):
        broker.act({"state": np.array([step], np.float32)})
    with pytest.raises(ClientError, match="needs at least 10"):
        broker.act({"state": np.array([6], np.float32)})
    broker.close()


def test_broker_over_a_real_client(flow_server):
    with Client(flow_server.url) as client:
        broker = ChunkBroker(client, execute_steps=4, prefetch_at=2)
        actions = np.stack([broker.act(_obs(0.01 * step)) for step in range(12)])
        broker.close()
    assert actions.shape == (12, 4) and np.all(np.isfinite(actions))
    assert broker.stats["requests"] == 1 + broker.stats["prefetched"] and broker.stats["prefetched"] == 3  # at steps 2, 6, 10


# ---- the thin client's footprint -----------------------------------------------------------------


def test_client_side_imports_no_torch():
    code = (
        "import sys, lbm_client as c; c.Client; c.ChunkBroker; c.packb;"
        "bad = [m for m in ('torch', 'mujoco', 'metaworld', 'lbm') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---- failing safe under abuse --------------------------------------------------------------------


class _Poisonable:
    """A served policy whose chunks turn non-finite or out of bounds on request (the Policy contract, delegated)."""

    def __init__(self, inner):
        self.inner, self.poison = inner, None
        self.embodiments, self.horizon, self.history, self.execute_steps = (
            inner.embodiments,
            inner.horizon,
            inner.history,
            inner.execute_steps,
        )
        self.resets = 0

    def describe(self):
        return self.inner.describe()

    def reset(self, seed=None):
        self.resets += 1
        return self.inner.reset(seed)

    def predict_chunk(self, observations, states, request=None):
        from dataclasses import replace as dc_replace

        chunk = self.inner.predict_chunk(observations, states)
        if self.poison is not None:
            actions = chunk.actions.copy()
            actions[0, 2, 1] = self.poison
            chunk = dc_replace(chunk, actions=actions)
        return chunk


@pytest.mark.parametrize("poison", [np.nan, np.inf, 7.0], ids=["nan", "inf", "out-of-bounds"])
def test_an_unsafe_chunk_is_never_sent_and_the_episode_restarts(ckpts, poison):
    policy = _Poisonable(_load(ckpts["flow"]))
    with PolicyServer(policy, ServerConfig(port=0, metrics_every_s=0)) as server, Client(server.url) as client:
        client.infer(_obs(0.1))
        resets = policy.resets
        policy.poison = poison
        with pytest.raises(ServerError, match="unsafe chunk"):
            client.infer(_obs(0.2))
        assert policy.resets == resets + 1  # the connection's history was dropped
        policy.poison = None
        reply = client.infer(_obs(0.2))["actions"]
        assert np.all(np.isfinite(reply)) and np.all(np.abs(reply) <= 1)
        assert fetch_metrics(server.url)["errors_by_kind"]["unsafe_actions"] == 1


def test_limits_on_new_prompts_image_size_connections_and_idle_time(ckpts):
    from websockets.sync.client import connect

    config = ServerConfig(
        port=0, metrics_every_s=0, max_new_prompts_per_minute=2, max_image_side=24, max_connections=2, idle_timeout_s=1.0
    )
    with PolicyServer(_load(ckpts["camera"]), config) as server:
        image = {"corner": np.zeros((16, 16, 3), np.uint8)}
        with Client(server.url) as client:
            client.infer(_obs(images=image))  # a known instruction costs nothing
            for i in range(2):
                client.infer(_obs(images=image, prompt=f"new instruction {i}"))
            with pytest.raises(ServerError, match="new instructions within a minute"):
                client.infer(_obs(images=image, prompt="one more new instruction"))
            with pytest.raises(ServerError, match="at most 24 per side"):
                client.infer(_obs(images={"corner": np.zeros((25, 16, 3), np.uint8)}, reset=True))
            with Client(server.url):
                with pytest.raises(ClientError):  # a third connection is answered 503
                    Client(server.url, connect_timeout_s=1)
        assert _wait_until(lambda: server.connections == 0)
        with connect(server.url, proxy=None) as ws:
            ws.recv()
            time.sleep(1.5)  # idle past the limit: the server closes the connection
            with pytest.raises(Exception):
                ws.send(packb(_obs(images=image)))
                ws.recv(timeout=5)
        assert fetch_metrics(server.url)["errors_by_kind"]["idle"] >= 1


def test_memory_is_given_back_after_large_frames(ckpts):
    """Large frames (14 MiB, refused for their image size) from 4 clients leave no lasting growth of the server.

    The server runs in its own process so that only its memory is measured; without giving freed
    heap back to the system (malloc_trim) it stays about 130 MB above its baseline here.
    """
    import os
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = (
        "import sys; from lbm.train import load_policy; from lbm.serve import PolicyServer, ServerConfig; "
        f"s = PolicyServer(load_policy({str(ckpts['camera'])!r}), ServerConfig(port={port}, metrics_every_s=0, "
        "max_message_mb=16)).start(); print('ready', flush=True); s.wait()"
    )
    server = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    try:
        assert server.stdout.readline().strip() == "ready"
        url = f"ws://127.0.0.1:{port}"

        def rss_mb() -> float:
            with open(f"/proc/{server.pid}/statm") as f:
                return int(f.read().split()[1]) * 4096 / 2**20

        image = {"corner": np.zeros((16, 16, 3), np.uint8)}
        with Client(url) as client:
            client.infer(_obs(images=image))
        baseline = rss_mb()

        def abuse() -> None:
            big = {"corner": np.random.default_rng(0).integers(0, 255, (2200, 2200, 3), dtype=np.uint8)}
            with Client(url) as c:
                for _ in range(10):
                    with pytest.raises(ServerError, match="per side"):
                        c.infer(_obs(images=big))

        threads = [threading.Thread(target=abuse) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        with Client(url) as client:
            assert client.infer(_obs(images=image))["actions"].shape == (4, 4)  # still serving
        assert _wait_until(lambda: rss_mb() < baseline + 30, timeout_s=10), (baseline, rss_mb())
    finally:
        server.kill()
        server.wait(10)


def test_abusers_do_not_starve_or_corrupt_a_good_client(ckpts):
    """Garbage, 1 MB prompts and never-seen prompts from other connections: the good client's every reply
    arrives and equals what the policy computes in process (fairness in correctness; benchmarks/serve_fairness.py
    measures the latency)."""
    from websockets.sync.client import connect

    local = _load(ckpts["flow"])
    config = ServerConfig(port=0, metrics_every_s=0, max_new_prompts_per_minute=3)
    with PolicyServer(_load(ckpts["flow"]), config) as server:
        stop = threading.Event()
        refused = {"garbage": 0, "huge_prompt": 0, "new_prompt": 0}

        def garbage() -> None:
            with connect(server.url, max_size=None) as ws:
                ws.recv()
                while not stop.is_set():
                    ws.send(b"\x93\xff not msgpack")
                    assert ws.recv(timeout=30).startswith("error:")
                    refused["garbage"] += 1

        def prompts(kind: str) -> None:
            with Client(server.url) as c:
                n = 0
                while not stop.is_set():
                    n += 1
                    prompt = "x" * 2**20 if kind == "huge_prompt" else f"{INSTRUCTION} number {n}"
                    try:
                        c.infer({**_obs(0.1), "prompt": prompt})
                    except ServerError:
                        refused[kind] += 1

        threads = [
            threading.Thread(target=f, args=a)
            for f, a in ((garbage, ()), (prompts, ("huge_prompt",)), (prompts, ("new_prompt",)))
        ]
        for t in threads:
            t.start()
        try:
            with Client(server.url) as good:
                good.reset(seed=5)
                source = LocalSource(local, seed=5)
                for x in np.linspace(-0.5, 0.5, 25):
                    # Batched with an abuser's request, float32 sums round differently: equal to rounding, not bits.
                    served, here = good.infer(_obs(float(x)))["actions"], source.infer(_obs(float(x)))["actions"]
                    np.testing.assert_allclose(served, here, rtol=1e-5, atol=1e-6)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert all(v > 0 for v in refused.values()), refused  # every abuser really ran and was refused
        metrics = fetch_metrics(server.url)
        assert metrics["errors_by_kind"].get("bad_request", 0) >= refused["garbage"] + refused["huge_prompt"]


def test_thin_client_installs_alone_and_drives_a_served_policy(ckpts, tmp_path):
    """lbm-client in a fresh venv (numpy, msgpack, websockets; no torch, no lbm) against a running server."""
    import venv
    from pathlib import Path

    client_dir = Path(__file__).resolve().parents[1] / "client"
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(client_dir)], check=True, timeout=600
    )
    with PolicyServer(_load(ckpts["flow"]), ServerConfig(port=0, metrics_every_s=0)) as server:
        code = (
            "import importlib.util, sys, numpy as np\n"
            "from lbm_client import Client, ChunkBroker\n"
            "assert all(importlib.util.find_spec(m) is None for m in ('torch', 'lbm', 'mujoco')), 'not alone'\n"
            f"with Client({server.url!r}) as c:\n"
            "    b = ChunkBroker(c, execute_steps=4)\n"
            "    b.reset(seed=1)\n"
            f"    acts = [b.act({{'state': np.zeros(39, np.float32), 'prompt': {INSTRUCTION!r}}}) for _ in range(8)]\n"
            "print(np.stack(acts).shape)\n"
        )
        out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(8, 4)"
