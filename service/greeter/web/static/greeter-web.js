// The page's gRPC-Web client: written for this project, no dependencies, no network
// fetch but the calls themselves (relative URLs, so the page works at / on the web port
// and under a gateway's path prefix such as /web/).
//
// Wire format (docs/grpc-web.md): POST /helloworld.Greeter/<Method>, content-type
// application/grpc-web+proto, body = one frame (flag 0x00, 4-byte big-endian length,
// message). The response is message frames, then a trailers frame (flag 0x80) of
// "name:value\r\n" lines; a trailers-only error also has grpc-status in the headers.
// HelloRequest and HelloReply each have one string field, number 1, which is all the
// protobuf this page has to encode and decode.
"use strict";

const IDENTITY = ["cluster", "pod", "node", "zone"];
const utf8 = new TextEncoder();
const text = new TextDecoder();

function varint(n) {
  const out = [];
  while (n > 0x7f) { out.push((n & 0x7f) | 0x80); n = Math.floor(n / 128); }
  out.push(n);
  return out;
}

// HelloRequest{name = 1}: tag 0x0a, length, UTF-8 bytes (an empty name is no field at all).
function helloRequest(name) {
  const bytes = utf8.encode(name);
  if (!bytes.length) return new Uint8Array(0);
  return Uint8Array.from([0x0a, ...varint(bytes.length), ...bytes]);
}

// HelloReply: field 1 (string) is the message; other fields are skipped by wire type.
function helloReply(bytes) {
  let at = 0;
  let message = "";
  const readVarint = () => {
    let value = 0, scale = 1, b;
    do { b = bytes[at++]; value += (b & 0x7f) * scale; scale *= 128; } while (b & 0x80);
    return value;
  };
  while (at < bytes.length) {
    const key = readVarint();
    const wire = key & 7;
    if (wire === 2) {
      const len = readVarint();
      if ((key >>> 3) === 1) message = text.decode(bytes.subarray(at, at + len));
      at += len;
    } else if (wire === 0) readVarint();
    else if (wire === 5) at += 4;
    else if (wire === 1) at += 8;
    else throw new Error("cannot decode HelloReply (wire type " + wire + ")");
  }
  return message;
}

function frame(payload) {
  const out = new Uint8Array(5 + payload.length);
  new DataView(out.buffer).setUint32(1, payload.length);
  out.set(payload, 5);
  return out;
}

function parseTrailers(bytes) {
  const found = {};
  for (const line of text.decode(bytes).split("\r\n")) {
    const at = line.indexOf(":");
    if (at > 0) found[line.slice(0, at).trim().toLowerCase()] = line.slice(at + 1).trim();
  }
  return found;
}

// One call; onReply(message) runs for each reply as it arrives (streams show up live).
async function grpcWeb(method, name, metadata, onReply) {
  const started = performance.now();
  const response = await fetch("helloworld.Greeter/" + method, {
    method: "POST",
    headers: { "content-type": "application/grpc-web+proto", "x-grpc-web": "1", ...metadata },
    body: frame(helloRequest(name)),
  });
  const identity = {};
  for (const key of IDENTITY) identity[key] = response.headers.get("x-greeter-" + key) || "";
  let trailers = {};
  const headerStatus = response.headers.get("grpc-status");
  if (headerStatus !== null) {
    trailers = { "grpc-status": headerStatus, "grpc-message": response.headers.get("grpc-message") || "" };
  }
  if (response.status !== 200) {
    trailers = { "grpc-status": "14", "grpc-message": "HTTP " + response.status };
  }
  let buffer = new Uint8Array(0);
  const reader = response.body.getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    const joined = new Uint8Array(buffer.length + value.length);
    joined.set(buffer); joined.set(value, buffer.length);
    buffer = joined;
    while (buffer.length >= 5) {
      const size = new DataView(buffer.buffer, buffer.byteOffset).getUint32(1);
      if (buffer.length < 5 + size) break;
      const flag = buffer[0];
      const payload = buffer.subarray(5, 5 + size);
      if (flag & 0x80) Object.assign(trailers, parseTrailers(payload));
      else onReply(helloReply(payload));
      buffer = buffer.subarray(5 + size);
    }
  }
  for (const key of IDENTITY) identity[key] = identity[key] || trailers["x-greeter-" + key] || "";
  const status = Number(trailers["grpc-status"] ?? 2);
  const message = decodeURIComponent(trailers["grpc-message"] || "");
  // The server's own time (W3C Server-Timing "app;dur=MS"), from the trailers, or the
  // headers of a trailers-only reply (the server exposes it to CORS).
  const timing = trailers["server-timing"] || response.headers.get("server-timing") || "";
  const dur = /(?:^|,)\s*app\s*;[^,]*dur=([0-9.]+)/.exec(timing);
  const serverMs = dur ? Number(dur[1]) : null;
  return { status, message, identity, ms: performance.now() - started, serverMs };
}

const $ = (id) => document.getElementById(id);
const CODES = ["OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
  "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
  "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"];

function show(result, replies) {
  const ok = result.status === 0;
  $("status").textContent = (CODES[result.status] || String(result.status)) + (ok ? "" : ": " + result.message);
  $("status").className = ok ? "ok" : "error";
  $("reply").textContent = replies.join("\n") || "-";
  for (const key of IDENTITY) $(key).textContent = result.identity[key] || "-";
  $("latency").textContent = result.ms.toFixed(1) + " ms";
  $("server-time").textContent = result.serverMs === null ? "n/a" : result.serverMs.toFixed(3) + " ms";
}

async function callOnce(method) {
  const replies = [];
  const metadata = method === "SayHelloStreamReply" ? { "x-greeter-stream-count": $("stream-count").value || "0" } : {};
  $("status").textContent = "calling...";
  $("status").className = "";
  try {
    const result = await grpcWeb(method, $("name").value, metadata, (reply) => {
      replies.push(reply);
      $("reply").textContent = replies.join("\n");
    });
    show(result, replies);
  } catch (error) {
    $("status").textContent = "failed: " + error.message;
    $("status").className = "error";
  }
}

const tally = new Map();

function renderTally(total) {
  const body = $("tally-body");
  body.replaceChildren();
  const clusters = new Map();
  // By cluster, then pod (pod-2 before pod-10), so a row stays where it is as counts change.
  const order = (a, b) => a.localeCompare(b, undefined, { numeric: true });
  const rows = [...tally.values()].sort((a, b) => order(a.cluster, b.cluster) || order(a.pod, b.pod));
  for (const row of rows) {
    const tr = document.createElement("tr");
    tr.dataset.cluster = row.cluster;
    tr.dataset.pod = row.pod;
    const share = total ? ((100 * row.calls) / total).toFixed(1) + "%" : "-";
    for (const [value, cls] of [[row.cluster, "cluster"], [row.pod, "pod"], [row.calls, "n calls"], [share, "n"], [row.errors, "n errors"]]) {
      const td = document.createElement("td");
      td.className = cls;
      td.textContent = value;
      tr.append(td);
    }
    body.append(tr);
    clusters.set(row.cluster, (clusters.get(row.cluster) || 0) + row.calls);
  }
  $("clusters").textContent = [...clusters].map(([c, n]) => c + ": " + n).join(", ");
  $("clusters").dataset.count = String(clusters.size);
}

async function repeat(times) {
  tally.clear();
  let done = 0;
  $("repeat-button").disabled = true;
  try {
    for (let i = 0; i < times; i++) {
      const replies = [];
      let result;
      try {
        result = await grpcWeb("SayHello", $("name").value, {}, (r) => replies.push(r));
      } catch (error) {
        result = { status: 14, message: error.message, identity: { cluster: "", pod: "" }, ms: 0 };
      }
      const cluster = result.identity.cluster || "(none)";
      const pod = result.identity.pod || "(none)";
      const key = cluster + "\u0000" + pod;
      const row = tally.get(key) || { cluster, pod, calls: 0, errors: 0 };
      row.calls += 1;
      if (result.status !== 0) row.errors += 1;
      tally.set(key, row);
      done += 1;
      $("repeat-progress").textContent = done + " / " + times;
      show(result, replies);
      renderTally(done);
    }
  } finally {
    $("repeat-button").disabled = false;
    $("repeat-progress").dataset.done = String(done);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("call-form").addEventListener("submit", (event) => { event.preventDefault(); callOnce("SayHello"); });
  $("say-stream").addEventListener("click", () => callOnce("SayHelloStreamReply"));
  $("repeat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const times = Math.max(1, Math.min(10000, Number($("repeat").value) || 1));
    repeat(times);
  });
});
