"""A typed client over the generated stubs, with a default timeout and retries on UNAVAILABLE."""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Iterable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hybridrec.v1 import recommender_pb2 as pb
from hybridrec.v1 import recommender_pb2_grpc as pb_grpc

SERVICE = "hybridrec.v1.Recommender"
SERVER_TIME_KEY = "hybridrec-server-time-us"
WORKER_PID_KEY = "hybridrec-worker-pid"


@dataclass(frozen=True)
class Recommendation:
    """One recommended item; the explanation fields are empty unless explain was asked."""

    item_id: str
    score: float
    source_scores: dict[str, float] = field(default_factory=dict)
    stage_scores: dict[str, float] = field(default_factory=dict)
    reason: str = ""


@dataclass(frozen=True)
class Recommendations:
    """The answer to one Recommend call."""

    items: list[Recommendation]
    model_version: str
    pipeline: str
    degraded_stages: list[str]
    cold_start: bool
    server_time_us: int | None = None
    worker_pid: int | None = None  # the server process that answered

    @property
    def item_ids(self) -> list[str]:
        return [r.item_id for r in self.items]


def _retry_config(retries: int) -> str:
    # gRPC's own retry machinery: only UNAVAILABLE is retried, which is always safe for reads.
    policy = {
        "maxAttempts": max(2, min(retries + 1, 5)),
        "initialBackoff": "0.05s",
        "maxBackoff": "1s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    return json.dumps({"methodConfig": [{"name": [{"service": SERVICE}], "retryPolicy": policy}]})


def _item(proto: pb.ScoredItem) -> Recommendation:
    exp = proto.explanation
    return Recommendation(proto.item_id, proto.score, dict(exp.source_scores), dict(exp.stage_scores), exp.reason)


class RecommenderClient:
    """Connects to a hybridrec server. Use as a context manager, or call close().

    `connections` > 1 opens that many channels, each with its own TCP connection, and spreads
    Recommend and SimilarItems calls over them in turn: a server started with `--workers N`
    shares its port between N processes connection by connection, so one connection would only
    ever reach one of them."""

    def __init__(self, target: str = "127.0.0.1:50051", timeout: float = 2.0, retries: int = 3,
                 channel: grpc.Channel | None = None, connections: int = 1) -> None:
        self.timeout = timeout
        options = [("grpc.enable_retries", 1)]
        if retries > 0:
            options.append(("grpc.service_config", _retry_config(retries)))
        if channel is not None:
            self._channels = [channel]
        elif connections > 1:  # a subchannel pool per channel: otherwise they share one connection
            local = [*options, ("grpc.use_local_subchannel_pool", 1)]
            self._channels = [grpc.insecure_channel(target, options=local) for _ in range(connections)]
        else:
            self._channels = [grpc.insecure_channel(target, options=options)]
        self._channel = self._channels[0]
        self._stubs = [pb_grpc.RecommenderStub(c) for c in self._channels]
        self._next = itertools.cycle(self._stubs).__next__  # one C-level call: safe across threads
        self._stub = self._stubs[0]
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> "RecommenderClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def recommend(self, user_id: str, k: int = 10, context_items: Iterable[str] = (),
                  exclude: Iterable[str] = (), pipeline: str = "", explain: bool = False,
                  timeout: float | None = None) -> Recommendations:
        """Top-k items for `user_id` (empty or unknown users get cold-start results)."""
        request = pb.RecommendRequest(user_id=user_id, k=k, context_item_ids=list(context_items),
                                      exclude_item_ids=list(exclude), pipeline=pipeline, explain=explain)
        response, call = self._next().Recommend.with_call(request, timeout=timeout or self.timeout)
        server_time = worker_pid = None
        for key, value in call.trailing_metadata() or ():
            if key == SERVER_TIME_KEY:
                server_time = int(value)
            elif key == WORKER_PID_KEY:
                worker_pid = int(value)
        return Recommendations(
            items=[_item(i) for i in response.items],
            model_version=response.model_version,
            pipeline=response.pipeline,
            degraded_stages=list(response.degraded_stages),
            cold_start=response.cold_start,
            server_time_us=server_time,
            worker_pid=worker_pid,
        )

    def similar_items(self, item_id: str, k: int = 10, timeout: float | None = None) -> list[Recommendation]:
        """Items whose content is nearest to `item_id`."""
        response = self._next().SimilarItems(pb.SimilarItemsRequest(item_id=item_id, k=k),
                                           timeout=timeout or self.timeout)
        return [_item(i) for i in response.items]

    def model_info(self, timeout: float | None = None) -> pb.ModelInfo:
        """Model version, sizes, pipelines and their stages."""
        return self._stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=timeout or self.timeout)

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """SERVING, NOT_SERVING, ... from the standard grpc.health.v1 service."""
        response = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout or self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
