"""Real-client check: the unmodified official `openai` Python SDK against a live gateway.

Usage: python sdk_check.py PATH_TO_ULTRA_GATEWAY_BINARY CONFIG

Starts the gateway on 127.0.0.1:0 with CONFIG (development mode, mock providers), reads the
bound address from its start-up line, then uses the SDK with only base_url and api_key set:
a plain and a streamed chat completion, the model list, an embedding (the SDK asks for base64
by default), `/api/analyze` through the SDK's generic `client.post`, an unknown model (the SDK must raise NotFoundError with our error code) and a bad
token (AuthenticationError). The api_key is a test token minted by `ultra-gateway token`.
"""

import re
import subprocess
import sys
import time

import openai
from openai import OpenAI


def start_gateway(binary, config):
    proc = subprocess.Popen(
        [binary, "run", "-c", config, "--listen", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                raise SystemExit(f"gateway exited with {proc.returncode}")
            continue
        m = re.search(r"listen=(\S+)", line)
        if "ultra-gateway started" in line and m:
            return proc, m.group(1).strip('"')
    proc.kill()
    raise SystemExit("gateway did not start within 60 s")


def main():
    binary, config = sys.argv[1], sys.argv[2]
    token = subprocess.run(
        [binary, "token", "-c", config, "--sub", "sdk-check", "--role", "user", "--ttl", "10m"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    proc, addr = start_gateway(binary, config)
    try:
        # The SDK sends api_key as `Authorization: Bearer`: a test token here.
        client = OpenAI(base_url=f"http://{addr}/v1", api_key=token)

        reply = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Hello from the SDK"}],
        )
        text = reply.choices[0].message.content
        assert "Hello from the SDK" in text, text
        assert reply.usage.total_tokens > 0
        print(f"plain chat: {text!r}")

        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "stream please"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        deltas, usage = [], None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                deltas.append(chunk.choices[0].delta.content)
            if chunk.usage:
                usage = chunk.usage
        streamed = "".join(deltas)
        assert "stream please" in streamed, streamed
        assert len(deltas) > 3, deltas
        assert usage is not None and usage.total_tokens > 0
        print(f"streamed chat: {len(deltas)} chunks, {usage.total_tokens} tokens")

        ids = [m.id for m in client.models.list()]
        assert "gpt-4o-mini" in ids and "text-embedding-3-small" in ids, ids
        print(f"models: {ids}")

        emb = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        assert len(emb.data) == 2 and len(emb.data[0].embedding) > 0
        print(f"embeddings: {len(emb.data)} x {len(emb.data[0].embedding)}")

        try:
            client.chat.completions.create(
                model="gpt-4o-mni", messages=[{"role": "user", "content": "x"}]
            )
            raise AssertionError("an unknown model must fail")
        except openai.NotFoundError as e:
            assert e.body["code"] == "model_not_found", e.body
            assert "gpt-4o-mini" in e.body["message"], e.body
            print(f"unknown model: {e.status_code} {e.body['code']}")

        # The gateway's own endpoint through the SDK's generic POST (an absolute URL).
        analysis = client.post(
            f"http://{addr}/api/analyze",
            body={"prompt": "Compare us", "models": ["gpt-4o-mini", "gpt-4o"]},
            cast_to=object,
        )
        assert analysis["object"] == "analysis", analysis
        assert analysis["status"] == "complete", analysis
        assert [r["model"] for r in analysis["results"]] == ["gpt-4o-mini", "gpt-4o"], analysis
        assert analysis["usage"]["total_tokens"] > 0, analysis
        print(f"analyze: {analysis['status']}, {len(analysis['results'])} results")

        try:
            OpenAI(base_url=f"http://{addr}/v1", api_key="not-a-token").models.list()
            raise AssertionError("a bad token must fail")
        except openai.AuthenticationError as e:
            assert e.body["code"] == "invalid_token", e.body
            print(f"bad token: {e.status_code} {e.body['code']}")

        print(f"openai SDK {openai.__version__}: all checks passed")
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
