"""A typed client over the generated stubs, with a default timeout and retries on UNAVAILABLE."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hybridrec.v1 import recommender_pb2 as pb
from hybridrec.v1 import recommender_pb2_grpc as pb_grpc

SERVICE = "hybridrec.v1.Recommender"
SERVER_TIME_KEY = "hybridrec-server-time-us"


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
    """Connects to a hybridrec server. Use as a context manager, or call close()."""

    def __init__(self, target: str = "127.0.0.1:50051", timeout: float = 2.0, retries: int = 3,
                 channel: grpc.Channel | None = None) -> None:
        self.timeout = timeout
        options = [("grpc.enable_retries", 1)]
        if retries > 0:
            options.append(("grpc.service_config", _retry_config(retries)))
        self._channel = channel or grpc.insecure_channel(target, options=options)
        self._stub = pb_grpc.RecommenderStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> "RecommenderClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def recommend(self, user_id: str, k: int = 10, context_items: Iterable[str] = (),
                  exclude: Iterable[str] = (), pipeline: str = "", explain: bool = False,
                  timeout: float | None = None) -> Recommendations:
        """Top-k items for `user_id` (empty or unknown users get cold-start results)."""
        request = pb.RecommendRequest(user_id=user_id, k=k, context_item_ids=list(context_items),
                                      exclude_item_ids=list(exclude), pipeline=pipeline, explain=explain)
        response, call = self._stub.Recommend.with_call(request, timeout=timeout or self.timeout)
        server_time = None
        for key, value in call.trailing_metadata() or ():
            if key == SERVER_TIME_KEY:
                server_time = int(value)
        return Recommendations(
            items=[_item(i) for i in response.items],
            model_version=response.model_version,
            pipeline=response.pipeline,
            degraded_stages=list(response.degraded_stages),
            cold_start=response.cold_start,
            server_time_us=server_time,
        )

    def similar_items(self, item_id: str, k: int = 10, timeout: float | None = None) -> list[Recommendation]:
        """Items whose content is nearest to `item_id`."""
        response = self._stub.SimilarItems(pb.SimilarItemsRequest(item_id=item_id, k=k),
                                           timeout=timeout or self.timeout)
        return [_item(i) for i in response.items]

    def model_info(self, timeout: float | None = None) -> pb.ModelInfo:
        """Model version, sizes, pipelines and their stages."""
        return self._stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=timeout or self.timeout)

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """SERVING, NOT_SERVING, ... from the standard grpc.health.v1 service."""
        response = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout or self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
