// A gRPC peer for tests/grpc.rs on Node's @grpc/grpc-js (pure JavaScript):
// the same server and client contract as peer.py (see its docstring).
//
//   node peer.js server NAME      serves test.Echo on 127.0.0.1:0, prints "PORT <n>"
//   node peer.js client TARGET    JSON list of calls on stdin, outcomes on stdout
"use strict";

const grpc = require("@grpc/grpc-js");

const raw = (x) => x;
const method = (path, requestStream, responseStream) => ({
  path,
  requestStream,
  responseStream,
  requestSerialize: raw,
  requestDeserialize: raw,
  responseSerialize: raw,
  responseDeserialize: raw,
});
const service = (name) => ({
  Unary: method(`/${name}/Unary`, false, false),
  ServerStream: method(`/${name}/ServerStream`, false, true),
  ClientStream: method(`/${name}/ClientStream`, true, false),
  Bidi: method(`/${name}/Bidi`, true, true),
});

function say(line) {
  process.stdout.write(line + "\n");
}

function serve(name) {
  const server = new grpc.Server({
    "grpc.max_receive_message_length": 8 << 20,
    "grpc.max_send_message_length": 8 << 20,
  });
  const handlers = {
    Unary(call, callback) {
      const text = call.request.toString("latin1");
      const initial = new grpc.Metadata();
      initial.set("x-server", name);
      // "wait" sends no head: a route timeout (time to the head) applies.
      if (text !== "wait") call.sendMetadata(initial);
      const trailing = new grpc.Metadata();
      trailing.set("x-server", name);
      if (text.startsWith("echo:")) return callback(null, call.request.subarray(5), trailing);
      if (text === "meta") {
        const md = {};
        for (const [k, v] of Object.entries(call.metadata.getMap())) {
          md[k] = Buffer.isBuffer(v) ? v.toString("base64") : v;
        }
        return callback(null, Buffer.from(JSON.stringify(md)));
      }
      if (text.startsWith("status:")) {
        const [, code, ...msg] = text.split(":");
        const md = new grpc.Metadata();
        md.set("x-detail", "ascii detail");
        md.set("x-detail-bin", Buffer.from([0, 1, 0xfe, 0xff]));
        return callback({ code: Number(code), details: msg.join(":"), metadata: md });
      }
      if (text === "time") {
        const d = call.getDeadline();
        const left = d === Infinity ? -1 : Math.floor(new Date(d).getTime() - Date.now());
        return callback(null, Buffer.from(String(left)));
      }
      if (text === "wait") {
        const timer = setTimeout(() => callback(null, Buffer.from("waited")), 30000);
        call.on("cancelled", () => {
          clearTimeout(timer);
          say(`CANCELLED ${name}`);
        });
        return;
      }
      if (text.startsWith("big:")) {
        const n = Number(text.slice(4));
        const b = Buffer.alloc(n);
        for (let i = 0; i < n; i++) b[i] = i % 251;
        return callback(null, b);
      }
      callback(null, call.request);
    },
    ServerStream(call) {
      const n = Number(call.request.toString().split(":")[1]);
      for (let i = 0; i < n; i++) call.write(Buffer.from(String(i)));
      call.end();
    },
    ClientStream(call, callback) {
      let count = 0;
      let total = 0;
      call.on("data", (m) => {
        count++;
        total += m.length;
      });
      call.on("end", () => callback(null, Buffer.from(`${count} ${total}`)));
    },
    Bidi(call) {
      call.on("data", (m) => call.write(m));
      call.on("end", () => call.end());
    },
  };
  server.addService(service("test.Echo"), handlers);
  // Package-less, so an implicit /echo route can carry it.
  server.addService(service("echo"), handlers);
  server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, port) => {
    if (err) throw err;
    say(`PORT ${port}`);
  });
  // Ends with the test: it closes stdin or kills the process.
  process.stdin.resume();
  process.stdin.on("end", () => server.forceShutdown() || process.exit(0));
}

function message(spec) {
  if (typeof spec === "object") return Buffer.from(spec.repeat.repeat(spec.n));
  return Buffer.from(spec, "latin1");
}

function summary(data) {
  if (data.length <= 4096) return data.toString("latin1");
  let sum = 0;
  for (const b of data) sum = (sum + b) % 4294967296;
  return { len: data.length, sum };
}

function metadataOut(md) {
  const out = [];
  if (!md) return out;
  for (const [k, values] of Object.entries(md.toJSON())) {
    for (const v of values) {
      out.push([k, Buffer.isBuffer(v) ? "b64:" + v.toString("base64") : v]);
    }
  }
  return out;
}

function metadataIn(pairs) {
  const md = new grpc.Metadata();
  for (const [k, v] of pairs || []) {
    md.add(k, k.endsWith("-bin") ? Buffer.from(v, "base64") : v);
  }
  return md;
}

function callOne(client, c) {
  return new Promise((resolve) => {
    const requests = (c.requests || []).map(message);
    const md = metadataIn(c.metadata);
    const options = c.timeout ? { deadline: Date.now() + c.timeout * 1000 } : {};
    const result = { responses: [], initial: [], trailing: [] };
    const started = Date.now();
    const onStatus = (st) => {
      result.code = st.code;
      result.details = st.details || "";
      result.trailing = metadataOut(st.metadata);
      result.elapsed_ms = Date.now() - started;
      resolve(result);
    };
    const onResponse = (err, resp) => {
      if (!err) result.responses.push(summary(resp));
    };
    let call;
    if (c.kind === "unary") {
      call = client.makeUnaryRequest(c.method, raw, raw, requests[0], md, options, onResponse);
      if (c.cancel_after) setTimeout(() => call.cancel(), c.cancel_after * 1000);
    } else if (c.kind === "client_stream") {
      call = client.makeClientStreamRequest(c.method, raw, raw, md, options, onResponse);
      for (const r of requests) call.write(r);
      call.end();
    } else if (c.kind === "server_stream") {
      call = client.makeServerStreamRequest(c.method, raw, raw, requests[0], md, options);
      call.on("data", (d) => result.responses.push(summary(d)));
    } else if (c.kind === "bidi") {
      // Ping-pong: each message is sent after the answer to the last.
      call = client.makeBidiStreamRequest(c.method, raw, raw, md, options);
      let next = 0;
      const send = () => {
        if (next < requests.length) call.write(requests[next++]);
        else call.end();
      };
      call.on("data", (d) => {
        result.responses.push(summary(d));
        send();
      });
      send();
    }
    call.on("metadata", (m) => (result.initial = metadataOut(m)));
    call.on("status", onStatus);
    // Stream calls report errors on 'error' as well as 'status'.
    call.on("error", () => {});
  });
}

async function client(target) {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const calls = JSON.parse(Buffer.concat(chunks).toString());
  const client = new grpc.Client(target, grpc.credentials.createInsecure(), {
    "grpc.max_receive_message_length": 8 << 20,
    "grpc.max_send_message_length": 8 << 20,
    "grpc.enable_retries": 0,
  });
  const out = [];
  for (const c of calls) out.push(await callOne(client, c));
  client.close();
  process.stdout.write(JSON.stringify(out));
}

const [role, arg] = process.argv.slice(2);
if (role === "server") serve(arg);
else client(arg);
