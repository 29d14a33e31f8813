// The page side of browser_peer.mjs: a livekit-client Room with its default options,
// driven by the node script. It reports through window.peerEmit (a binding the node
// script exposes) and answers commands through window.peerCommand (called with evaluate).
// Loaded after livekit-client's UMD build, which defines window.LivekitClient.
'use strict';

(() => {
  const LK = window.LivekitClient;
  const emit = (event, fields = {}) => window.peerEmit(JSON.stringify({ event, ...fields }));

  // What livekit-client does on the wire, for the test to assert on: every signalling
  // WebSocket it opens and every validate request it makes (paths and statuses only; the
  // token travels in the query and is never reported).
  const NativeWebSocket = window.WebSocket;
  window.WebSocket = class extends NativeWebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      const path = new URL(url).pathname;
      this.addEventListener('open', () => emit('signal', { path, outcome: 'open' }));
      this.addEventListener('error', () => emit('signal', { path, outcome: 'error' }));
    }
  };
  const nativeFetch = window.fetch.bind(window);
  window.fetch = async (input, init) => {
    const path = new URL(typeof input === 'string' ? input : input.url, location.href).pathname;
    try {
      const resp = await nativeFetch(input, init);
      emit('http', { path, status: resp.status });
      return resp;
    } catch (e) {
      emit('http', { path, status: null, error: String(e && e.message) });
      throw e;
    }
  };

  // Every peer connection, so that `ice` can report what ICE settled on.
  const peerConnections = [];
  const NativePC = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends NativePC {
    constructor(...args) {
      super(...args);
      this.gathered = [];
      this.addEventListener('icecandidate', (ev) => {
        this.gathered.push(ev.candidate ? ev.candidate.candidate : null);
      });
      peerConnections.push(this);
    }
  };

  const b64encode = (bytes) => {
    let s = '';
    for (const b of bytes) s += String.fromCharCode(b);
    return btoa(s);
  };
  const b64decode = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  const room = new LK.Room();

  room.on(LK.RoomEvent.ParticipantConnected, (p) =>
    emit('participant_connected', { identity: p.identity }));
  room.on(LK.RoomEvent.ParticipantDisconnected, (p) =>
    emit('participant_disconnected', { identity: p.identity }));
  room.on(LK.RoomEvent.DataReceived, (payload, participant, kind, topic, _enc, identity) =>
    emit('data_received', {
      data_b64: b64encode(payload),
      kind: kind === LK.DataPacket_Kind.LOSSY ? 'lossy' : 'reliable',
      topic: topic ?? null,
      from: participant?.identity ?? identity ?? null,
    }));
  room.on(LK.RoomEvent.Reconnecting, () => emit('reconnecting'));
  room.on(LK.RoomEvent.Reconnected, () => emit('reconnected'));
  room.on(LK.RoomEvent.Disconnected, (reason) =>
    emit('disconnected', { reason: reason === undefined ? null : LK.DisconnectReason[reason] }));

  function rpcHandler(behavior) {
    // The same behaviours as tests/interop/room_peer.py's rpc_handler.
    return async (data) => {
      if (behavior === 'fail') throw new LK.RpcError(4001, 'refused', 'why');
      if (behavior === 'crash') throw new Error('secret internals');
      if (behavior === 'sleep') await sleep(30000);
      return `echo:${data.payload}:${data.callerIdentity}`;
    };
  }

  async function iceReport() {
    const out = [];
    for (const pc of peerConnections) {
      const entry = {
        connection_state: pc.connectionState,
        ice_state: pc.iceConnectionState,
        gathered: pc.gathered,
        in_local_sdp: (pc.localDescription?.sdp ?? '').split(/\r?\n/)
          .filter((l) => l.startsWith('a=candidate:')),
        selected: null,
      };
      const stats = await pc.getStats();
      let pairId = null;
      stats.forEach((s) => {
        if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
      });
      const pair = pairId && stats.get(pairId);
      if (pair) {
        const side = (id) => {
          const c = stats.get(id);
          return c && { type: c.candidateType, address: c.address ?? null, port: c.port,
                        protocol: c.protocol };
        };
        entry.selected = { local: side(pair.localCandidateId),
                           remote: side(pair.remoteCandidateId) };
      }
      out.push(entry);
    }
    return out;
  }

  // Answers { ok: true, ...fields } or { ok: false, message, code?, data? }.
  window.peerCommand = async (cmd) => {
    const me = room.localParticipant;
    try {
      switch (cmd.cmd) {
        case 'publish_data':
          await me.publishData(b64decode(cmd.data_b64), {
            reliable: cmd.reliable ?? true,
            topic: cmd.topic ?? undefined,
            destinationIdentities: cmd.destinations ?? [],
          });
          return { ok: true };
        case 'register_rpc':
          room.registerRpcMethod(String(cmd.method), rpcHandler(String(cmd.behavior)));
          return { ok: true };
        case 'perform_rpc': {
          const destination = String(cmd.destination);
          // What the client knows of the callee when it chooses the RPC version: v2 (data
          // streams) when it advertises client_protocol >= 1, else v1 (RpcRequest packets).
          const known = room.remoteParticipants.get(destination);
          const clientProtocol = known ? known.clientProtocol : null;
          try {
            const result = await me.performRpc({
              destinationIdentity: destination,
              method: String(cmd.method),
              payload: String(cmd.payload ?? ''),
              responseTimeout: Math.round(Number(cmd.timeout ?? 10) * 1000),
            });
            return { ok: true, result, callee_client_protocol: clientProtocol };
          } catch (e) {
            return { ok: false, message: e.message, code: e.code ?? null, data: e.data ?? null,
                     callee_client_protocol: clientProtocol };
          }
        }
        case 'ice':
          return { ok: true, peer_connections: await iceReport() };
        case 'participants':
          return { ok: true, participants: [...room.remoteParticipants.keys()].sort() };
        default:
          return { ok: false, message: `unknown command ${JSON.stringify(cmd.cmd)}` };
      }
    } catch (e) {
      return { ok: false, message: `${e && e.name}: ${e && e.message}` };
    }
  };

  window.peerConnect = async (url, token) => {
    try {
      await room.connect(url, token);
    } catch (e) {
      return {
        ok: false,
        name: e && e.name,
        message: e && e.message,
        // By name from `reason`: Room.connect copies the signal error's reason and status
        // into its own ConnectionError but leaves that one's `reasonName` as it was.
        reason: e && e.reason !== undefined ? LK.ConnectionErrorReason[e.reason] ?? null : null,
        status: e && e.status !== undefined ? e.status : null,
      };
    }
    return {
      ok: true,
      identity: room.localParticipant.identity,
      participants: [...room.remoteParticipants.keys()].sort(),
      server_version: room.serverInfo ? room.serverInfo.version : null,
    };
  };

  window.peerDisconnect = () => room.disconnect();
})();
