"""A model provider on loopback: OpenAI, Anthropic and Gemini (google-genai) APIs, answering in
each provider's documented response format, whole or streamed (server-sent events), and Amazon
Bedrock's Converse API (whole).

The client libraries call it through their own HTTP clients, with base_url set to it. The answer
and the usage are fixed per provider (USAGE), so a test knows what every layer must record.

An agent loop: an OpenAI chat request that offers tools and carries no tool result yet is
answered with a call of its first tool (TOOL_ARGUMENTS, TOOL_CALL_USAGE); once the conversation
holds the tool's result, with the final ANSWER.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER = "The nightly job retried 40 times against a revoked token; rotate it and cap retries at 3."
THOUGHT = "The logs show 40 retries with the same token id."

# Each provider's own usage fields, as its API reports them.
OPENAI_USAGE = {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
                "prompt_tokens_details": {"cached_tokens": 200},
                "completion_tokens_details": {"reasoning_tokens": 120}}
OPENAI_RESPONSES_USAGE = {"input_tokens": 1200, "output_tokens": 300, "total_tokens": 1500,
                          "input_tokens_details": {"cached_tokens": 200},
                          "output_tokens_details": {"reasoning_tokens": 120}}
ANTHROPIC_USAGE = {"input_tokens": 900, "cache_read_input_tokens": 300, "cache_creation_input_tokens": 0,
                   "output_tokens": 250}
# The tool-calling turn of an agent loop, counted apart from the final answer's turn.
TOOL_CALL_USAGE = {"prompt_tokens": 800, "completion_tokens": 40, "total_tokens": 840,
                   "prompt_tokens_details": {"cached_tokens": 0},
                   "completion_tokens_details": {"reasoning_tokens": 0}}
TOOL_ARGUMENTS = {"ticket_id": 4711}
BEDROCK_USAGE = {"inputTokens": 1100, "outputTokens": 260, "totalTokens": 1660, "cacheReadInputTokens": 300,
                 "cacheWriteInputTokens": 0}
GEMINI_USAGE = {"promptTokenCount": 1000, "cachedContentTokenCount": 400, "candidatesTokenCount": 200,
                "thoughtsTokenCount": 50, "totalTokenCount": 1250}


def _chunks(text: str, size: int = 17) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms delayed-ACK stall
    server: ProviderServer

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        self.server.requests.append((self.path, body))
        path = self.path.split("?", 1)[0]
        if path.endswith("/chat/completions"):
            self._openai_chat(body)
        elif path.endswith("/responses"):
            self._openai_responses(body)
        elif path.endswith("/messages"):
            self._anthropic(body)
        elif path.startswith("/model/") and path.endswith("/converse"):
            self._bedrock_converse()
        elif ":generateContent" in path or ":streamGenerateContent" in path:
            self._gemini(path.rsplit("/", 1)[-1].split(":", 1)[0], ":streamGenerateContent" in path)
        else:
            self._send_json({"error": {"message": f"no route {path}"}}, status=404)

    # --- transport ------------------------------------------------------------------------------
    def _send_json(self, value: dict, status: int = 200) -> None:
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_events(self, events: list[tuple[str | None, str]]) -> None:
        """Server-sent events, each written as it would be streamed; (event name or None, data)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        for name, data in events:
            frame = (f"event: {name}\n" if name else "") + f"data: {data}\n\n"
            self.wfile.write(frame.encode())
            self.wfile.flush()
        self.close_connection = True

    # --- OpenAI ---------------------------------------------------------------------------------
    def _openai_chat(self, request: dict) -> None:
        model = request["model"]
        tools = request.get("tools") or []
        if tools and not any(m.get("role") == "tool" for m in request.get("messages", [])):
            self._openai_tool_call(model, tools[0]["function"]["name"], request)
            return
        if not request.get("stream"):
            self._send_json({
                "id": "chatcmpl-aw1", "object": "chat.completion", "created": 1732400000, "model": model,
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                             "message": {"role": "assistant", "content": ANSWER, "refusal": None}}],
                "usage": OPENAI_USAGE,
            })
            return
        base = {"id": "chatcmpl-aw2", "object": "chat.completion.chunk", "created": 1732400000, "model": model}
        events = [(None, json.dumps({**base, "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}))]
        events += [(None, json.dumps({**base, "choices": [
            {"index": 0, "delta": {"content": piece}, "finish_reason": None}]})) for piece in _chunks(ANSWER)]
        events.append((None, json.dumps({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})))
        if (request.get("stream_options") or {}).get("include_usage"):
            events.append((None, json.dumps({**base, "choices": [], "usage": OPENAI_USAGE})))
        events.append((None, "[DONE]"))
        self._send_events(events)

    def _openai_tool_call(self, model: str, tool: str, request: dict) -> None:
        call = {"id": "call_aw1", "type": "function",
                "function": {"name": tool, "arguments": json.dumps(TOOL_ARGUMENTS)}}
        if not request.get("stream"):
            self._send_json({
                "id": "chatcmpl-aw0", "object": "chat.completion", "created": 1732400000, "model": model,
                "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None,
                             "message": {"role": "assistant", "content": None, "refusal": None,
                                         "tool_calls": [call]}}],
                "usage": TOOL_CALL_USAGE,
            })
            return
        base = {"id": "chatcmpl-aw0", "object": "chat.completion.chunk", "created": 1732400000, "model": model}
        arguments = call["function"]["arguments"]
        events = [(None, json.dumps({**base, "choices": [{"index": 0, "finish_reason": None, "delta": {
            "role": "assistant", "content": None, "tool_calls": [
                {"index": 0, **call, "function": {"name": tool, "arguments": ""}}]}}]}))]
        events += [(None, json.dumps({**base, "choices": [{"index": 0, "finish_reason": None, "delta": {
            "tool_calls": [{"index": 0, "function": {"arguments": piece}}]}}]})) for piece in _chunks(arguments, 5)]
        events.append((None, json.dumps({**base, "choices": [
            {"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})))
        if (request.get("stream_options") or {}).get("include_usage"):
            events.append((None, json.dumps({**base, "choices": [], "usage": TOOL_CALL_USAGE})))
        events.append((None, "[DONE]"))
        self._send_events(events)

    def _openai_responses(self, request: dict) -> None:
        response = {
            "id": "resp_aw1", "object": "response", "created_at": 1732400000, "status": "completed",
            "model": request["model"], "error": None, "incomplete_details": None, "instructions": None,
            "output": [
                {"id": "rs_1", "type": "reasoning", "summary": [{"type": "summary_text", "text": THOUGHT}]},
                {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
                 "content": [{"type": "output_text", "text": ANSWER, "annotations": []}]},
            ],
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "temperature": 1.0, "top_p": 1.0,
            "usage": OPENAI_RESPONSES_USAGE,
        }
        if not request.get("stream"):
            self._send_json(response)
            return
        started = {**response, "status": "in_progress", "output": [], "usage": None}
        events = [("response.created", {"type": "response.created", "sequence_number": 0, "response": started})]
        for piece in _chunks(ANSWER):
            events.append(("response.output_text.delta", {
                "type": "response.output_text.delta", "sequence_number": len(events), "item_id": "msg_1",
                "output_index": 1, "content_index": 0, "delta": piece, "logprobs": []}))
        events.append(("response.completed", {"type": "response.completed", "sequence_number": len(events),
                                              "response": response}))
        self._send_events([(name, json.dumps(data)) for name, data in events])

    # --- Anthropic ------------------------------------------------------------------------------
    def _anthropic(self, request: dict) -> None:
        model = request["model"]
        if not request.get("stream"):
            self._send_json({
                "id": "msg_aw1", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": ANSWER}],
                "stop_reason": "end_turn", "stop_sequence": None, "usage": ANTHROPIC_USAGE,
            })
            return
        start_usage = {**ANTHROPIC_USAGE, "output_tokens": 1}
        events = [
            ("message_start", {"type": "message_start", "message": {
                "id": "msg_aw2", "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": start_usage}}),
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}}),
            ("ping", {"type": "ping"}),
        ]
        events += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "text_delta", "text": piece}})
                   for piece in _chunks(ANSWER)]
        events += [
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                               "usage": {"output_tokens": ANTHROPIC_USAGE["output_tokens"]}}),
            ("message_stop", {"type": "message_stop"}),
        ]
        self._send_events([(name, json.dumps(data)) for name, data in events])

    # --- Amazon Bedrock -------------------------------------------------------------------------
    def _bedrock_converse(self) -> None:
        self._send_json({
            "output": {"message": {"role": "assistant", "content": [{"text": ANSWER}]}},
            "stopReason": "end_turn", "usage": BEDROCK_USAGE, "metrics": {"latencyMs": 120},
        })

    # --- Gemini ---------------------------------------------------------------------------------
    def _gemini(self, model: str, stream: bool) -> None:
        def response(text: str, finish: str | None, usage: dict | None) -> dict:
            candidate = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
            if finish:
                candidate["finishReason"] = finish
            out = {"candidates": [candidate], "modelVersion": model, "responseId": "gem-aw1"}
            if usage:
                out["usageMetadata"] = usage
            return out

        if not stream:
            self._send_json(response(ANSWER, "STOP", GEMINI_USAGE))
            return
        pieces = _chunks(ANSWER)
        events = [(None, json.dumps(response(piece, None, None))) for piece in pieces[:-1]]
        events.append((None, json.dumps(response(pieces[-1], "STOP", GEMINI_USAGE))))
        self._send_events(events)


class ProviderServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, dict]] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
