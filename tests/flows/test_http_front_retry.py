"""Errors we generate, retries and timeouts at the HTTP listener."""

from __future__ import annotations

import httpx
import pytest

from tests.flows.test_http_front_kit import pattern, running_front, sha


async def test_503_says_why_when_no_site_serves_the_key() -> None:
    async with running_front(advertise=False) as front, httpx.AsyncClient() as client:
        resp = await client.get(f"{front.url}/")
        assert resp.status_code == 503
        assert resp.text == "no site serves 'api': no reachable site has a connector for it\n"
        # One request, refused after the first try and 2 retries (its entry ends
        # just after the answer went out).
        await front.wait_idle()
        assert front.table.outcomes["refused"] == 1
        (record,) = front.table.records.recent(1)
        assert record.attempts == 3 and record.status == 503 and record.by_router


async def test_retry_after_a_refusal_then_served() -> None:
    async with running_front() as front, httpx.AsyncClient() as client:
        front.backend.refuse = 1
        body = pattern(10_000)
        resp = await client.post(f"{front.url}/sha", content=body)
        assert resp.status_code == 200 and resp.text == sha(body)
        assert len(front.backend.heads) == 1
        # refused more often than the retries: the last reason, said in the body
        front.backend.refuse = 5
        resp = await client.get(f"{front.url}/")
        assert resp.status_code == 503 and "cannot reach 'api' target" in resp.text
        # live config: no retries
        front.backend.refuse = 1
        front.set(retries=0)
        assert (await client.get(f"{front.url}/")).status_code == 503


async def test_an_application_5xx_is_retried_only_when_idempotent() -> None:
    async with running_front() as front, httpx.AsyncClient() as client:
        front.backend.fail_first = 1
        resp = await client.get(f"{front.url}/")
        assert resp.status_code == 200 and resp.text == "ok\n"
        assert len(front.backend.heads) == 2
        front.backend.fail_first = 1
        resp = await client.post(f"{front.url}/", content=b"x")
        assert resp.status_code == 503 and resp.text == "app says 503\n"
        assert len(front.backend.heads) == 3
        # a 503 a router made: the application never saw it, so even a POST goes again,
        # its body replayed
        front.backend.router_fail_first = 1
        body = pattern(50_000)
        resp = await client.post(f"{front.url}/sha", content=body)
        assert resp.status_code == 200 and resp.text == sha(body)
        assert len(front.backend.heads) == 5


async def test_lost_flow_before_the_response_is_retried_then_503() -> None:
    async with running_front() as front, httpx.AsyncClient() as client:
        resp = await client.get(f"{front.url}/lost")
        assert resp.status_code == 503 and "the request's flow was lost" in resp.text
        assert len(front.backend.heads) == 3
        # a body past the replay buffer is not sent again
        resp = await client.put(f"{front.url}/lost", content=pattern(200_000))
        assert resp.status_code == 503
        assert len(front.backend.heads) == 4


async def test_timeout_answers_504() -> None:
    async with running_front(timeout_s=0.3) as front, httpx.AsyncClient() as client:
        resp = await client.get(f"{front.url}/slow")
        assert resp.status_code == 504
        assert resp.text == "'api': no response within 0.3 s\n"
        await front.wait_idle()
        await front.wait(lambda: front.backend.aborted == 1)  # its flow was reset


async def test_grpc_gets_trailers_only_errors_never_an_http_5xx() -> None:
    grpc = {"content-type": "application/grpc", "te": "trailers"}
    async with running_front(advertise=False) as front, \
            httpx.AsyncClient(http1=False, http2=True) as client:
        resp = await client.post(f"{front.url}/pkg.Svc/Call", headers=grpc, content=b"\0" * 5)
        assert resp.status_code == 200 and resp.content == b""
        assert resp.headers["grpc-status"] == "14"
        assert resp.headers["grpc-message"].startswith("no site serves 'api'")
    async with running_front(timeout_s=0.2) as front, \
            httpx.AsyncClient(http1=False, http2=True) as client:
        resp = await client.post(f"{front.url}/slow", headers=grpc, content=b"\0" * 5)
        assert resp.status_code == 200 and resp.headers["grpc-status"] == "4"


async def test_a_deleted_listener_answers_503_on_open_connections() -> None:
    async with running_front() as front, httpx.AsyncClient() as client:
        assert (await client.get(f"{front.url}/")).status_code == 200
        del front.config["api"]
        resp = await client.get(f"{front.url}/")
        assert resp.status_code == 503 and resp.text == "the listener for 'api' was deleted\n"


async def test_a_flow_lost_mid_response_resets_the_client_never_looks_complete() -> None:
    async with running_front() as front:
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.HTTPError):  # h1: the connection is reset
                await client.get(f"{front.url}/cut")
        async with httpx.AsyncClient(http1=False, http2=True) as client:
            with pytest.raises(httpx.HTTPError):  # h2: the stream is reset
                await client.get(f"{front.url}/cut")
            assert (await client.get(f"{front.url}/")).text == "ok\n"  # same connection
        assert len(front.backend.heads) == 3  # never retried once it started
