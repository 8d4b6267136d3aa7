/* DAARION City: rooms, messages and presence over socket.io, on whichever node served this page. */
"use strict";
(function () {
	const params = new URLSearchParams(location.search);
	// Values from the address bar, the user or the server go into URLs only checked and encoded: a room
	// "id" like "x/leave?" once steered the page into POSTing to another endpoint.
	const ROOM_ID = /^[a-z0-9][a-z0-9_-]{0,62}$/;
	const USER_ID = /^[A-Za-z0-9_.@:-]{1,200}$/;
	const HEARTBEAT_MS = Math.min(60000, Math.max(1000, Number(params.get("hb")) || 10000));
	/** /api/city/rooms/<room>/<more…>, every segment encoded; throws for a value that is not a room id. */
	function roomPath(roomId, ...more) {
		if (!ROOM_ID.test(String(roomId))) throw new Error(`Not a room id: ${String(roomId).slice(0, 80)}`);
		return ["/api/city/rooms", roomId, ...more].map((part, i) => (i ? encodeURIComponent(part) : part)).join("/");
	}
	const WS = { path: "/ws/socket.io", transports: ["websocket"] };
	const state = { token: sessionStorage.getItem("token"), user: sessionStorage.getItem("user"), room: null, owner: null, roomSocket: null, presenceSocket: null, active: true, seen: new Set() };
	const deviceId = sessionStorage.getItem("device") || `web-${Math.random().toString(36).slice(2, 10)}`;
	sessionStorage.setItem("device", deviceId);
	const $ = id => document.getElementById(id);

	function showError(message) {
		$("error").textContent = message || "";
	}

	const isExpired = problem => !!problem && (problem.type === "TOKEN_EXPIRED" || (problem.data && problem.data.type === "TOKEN_EXPIRED"));

	// A token expires (the server then closes our sockets with TOKEN_EXPIRED): get a new one for the same
	// user from the development login; where there is none (production), sign in again.
	let renewing = null;
	function renewToken() {
		renewing =
			renewing ||
			fetch(`/auth/dev-token?user=${encodeURIComponent(state.user)}`)
				.then(res => (res.ok ? res.json() : Promise.reject(new Error("Session expired: sign in again"))))
				.then(data => {
					state.token = data.token;
					sessionStorage.setItem("token", data.token);
				})
				.finally(() => (renewing = null));
		return renewing;
	}

	/** Reconnects a socket with a new token when the server closes it (or refuses it) for an expired one. */
	function renewOnExpiry(socket) {
		const reconnect = () =>
			renewToken().then(
				() => {
					socket.auth = { ...socket.auth, token: state.token };
					socket.connect();
				},
				err => showError(err.message),
			);
		socket.on("error_event", problem => isExpired(problem) && socket.once("disconnect", reconnect));
		socket.on("connect_error", err => isExpired(err) && reconnect());
	}

	async function api(method, path, body, renewed = false) {
		const res = await fetch(path, {
			method,
			headers: { authorization: `Bearer ${state.token}`, ...(body ? { "content-type": "application/json" } : {}) },
			body: body ? JSON.stringify(body) : undefined,
		});
		const data = await res.json().catch(() => ({}));
		if (isExpired(data) && !renewed) return renewToken().then(() => api(method, path, body, true));
		if (!res.ok) throw new Error(data.message || `HTTP ${res.status}`);
		return data;
	}

	// ---- rooms and messages -------------------------------------------------------------------
	async function loadRooms() {
		const rooms = await api("GET", "/api/city/rooms");
		const list = $("rooms");
		list.innerHTML = "";
		for (const room of rooms) {
			const li = document.createElement("li");
			const button = document.createElement("button");
			button.textContent = `# ${room.id}`;
			button.dataset.room = room.id;
			button.className = room.id === state.room ? "active" : "";
			button.onclick = () => openRoom(room.id);
			li.appendChild(button);
			list.appendChild(li);
		}
	}

	function renderMessage(message) {
		if (state.seen.has(message.id)) return;
		state.seen.add(message.id);
		const li = document.createElement("li");
		li.dataset.seq = message.seq;
		li.className = message.author_id === state.user ? "mine" : "";
		const author = document.createElement("span");
		author.className = "author";
		author.textContent = message.author_id;
		const body = document.createElement("span");
		body.className = "body";
		body.textContent = message.body;
		li.append(author, body);
		// Keep room order by seq even if two nodes' broadcasts cross on the way.
		const list = $("messages");
		const after = [...list.children].find(el => Number(el.dataset.seq) > message.seq);
		list.insertBefore(li, after || null);
		list.scrollTop = list.scrollHeight;
	}

	async function openRoom(roomId) {
		const join = roomPath(roomId, "join"); // refuses anything but a room id, before any request
		if (state.roomSocket) state.roomSocket.close();
		state.room = roomId;
		state.seen = new Set();
		$("messages").innerHTML = "";
		$("room-title").textContent = `# ${roomId}`;
		showError("");
		await api("POST", join);
		const page = await api("GET", `${roomPath(roomId, "messages")}?limit=50`);
		page.messages.forEach(renderMessage);
		state.roomSocket = io(`/city/rooms/${encodeURIComponent(roomId)}`, { ...WS, auth: { token: state.token } });
		renewOnExpiry(state.roomSocket);
		state.roomSocket.on("message", renderMessage);
		state.roomSocket.on("error_event", e => isExpired(e) || showError(e.message));
		loadMembers().catch(e => showError(e.message));
		state.roomSocket.on("connect_error", e => isExpired(e) || showError(e.message));
		watchRoom(roomId);
		$("message-body").disabled = false;
		document.querySelector("#composer button").disabled = false;
		loadRooms().catch(e => showError(e.message));
	}

	$("composer").addEventListener("submit", event => {
		event.preventDefault();
		const input = $("message-body");
		const body = input.value.trim();
		if (!body || !state.roomSocket) return;
		state.roomSocket.emit("message", { body }, answer => {
			if (answer && answer.ok) {
				input.value = "";
				showError("");
			} else showError((answer && answer.error && answer.error.message) || "not sent");
		});
	});

	// ---- members: everyone in the room sees them; its owner invites and removes -----------------
	async function loadMembers() {
		const roomId = state.room;
		const room = await api("GET", roomPath(roomId, "members"));
		if (roomId !== state.room) return;
		state.owner = room.owner;
		const mine = room.owner === state.user;
		const list = $("members");
		list.innerHTML = "";
		for (const member of room.members) {
			const li = document.createElement("li");
			li.dataset.user = member.user_id;
			li.textContent = member.user_id === room.owner ? `${member.user_id} (owner)` : member.user_id;
			if (mine && member.user_id !== room.owner) {
				const remove = document.createElement("button");
				remove.type = "button";
				remove.textContent = "remove";
				remove.dataset.testid = "remove-member";
				remove.onclick = () => changeMember("DELETE", member.user_id);
				li.append(" ", remove);
			}
			list.appendChild(li);
		}
		$("invite").hidden = !mine;
	}

	async function changeMember(method, userId) {
		try {
			if (!USER_ID.test(userId)) throw new Error("user: 1-200 letters, digits, . _ @ : -");
			if (method === "POST") await api("POST", roomPath(state.room, "members"), { user_id: userId });
			else await api("DELETE", roomPath(state.room, "members", userId));
			showError("");
			await loadMembers();
		} catch (e) {
			showError(e.message);
		}
	}

	$("invite").addEventListener("submit", async event => {
		event.preventDefault();
		const userId = $("invite-user").value.trim();
		await changeMember("POST", userId);
		if (!$("error").textContent) $("invite-user").value = "";
	});

	$("new-room").addEventListener("submit", async event => {
		event.preventDefault();
		const id = $("new-room-id").value.trim();
		try {
			if (!ROOM_ID.test(id)) throw new Error("room id: lowercase letters, digits, - and _, up to 63");
			await api("POST", "/api/city/rooms", { id, name: id, is_public: !$("new-room-private").checked });
			$("new-room-id").value = "";
			await openRoom(id);
		} catch (e) {
			showError(e.message);
		}
	});

	// ---- presence ------------------------------------------------------------------------------
	const people = new Map();
	function renderOnline() {
		const list = $("online");
		list.innerHTML = "";
		for (const [userId, status] of [...people.entries()].sort()) {
			const li = document.createElement("li");
			li.dataset.user = userId;
			li.dataset.status = status;
			const dot = document.createElement("span");
			dot.className = `dot ${status}`;
			dot.title = status;
			const name = document.createElement("span");
			name.textContent = userId === state.user ? `${userId} (you)` : userId;
			li.append(dot, name);
			list.appendChild(li);
		}
	}

	/** The online list follows the open room: its members' presence only (again after every reconnect). */
	function watchRoom(roomId) {
		if (!state.presenceSocket || !state.presenceSocket.connected) return;
		state.presenceSocket.emit("watch", { room_id: roomId }, answer => {
			if (!answer || !answer.ok) return;
			people.clear();
			answer.snapshot.users.forEach(u => people.set(u.user_id, u.status));
			renderOnline();
		});
	}

	function startPresence() {
		const socket = io("/city/presence", { ...WS, auth: { token: state.token, device: deviceId } });
		state.presenceSocket = socket;
		renewOnExpiry(socket);
		socket.on("presence.snapshot", snapshot => {
			snapshot.users.forEach(u => people.set(u.user_id, u.status));
			renderOnline();
		});
		socket.on("presence", change => {
			people.set(change.user_id, change.status);
			renderOnline();
		});
		// An operator's system.broadcast (POST /api/v1/broadcast), pushed by every gateway.
		socket.on("banner", banner => {
			$("banner").textContent = banner.message;
			$("banner").dataset.severity = banner.severity;
			$("banner").hidden = false;
		});
		socket.on("registry", refreshNodesSoon);
		socket.on("connect", () => {
			socket.emit("heartbeat", { active: true });
			if (state.room) watchRoom(state.room);
		});
		// Activity since the last heartbeat keeps us online; none for PRESENCE_AWAY_AFTER → away (server side).
		for (const type of ["mousemove", "keydown", "click", "scroll", "touchstart"]) {
			addEventListener(type, () => (state.active = true), { passive: true });
		}
		setInterval(() => {
			if (document.visibilityState !== "visible") return;
			socket.emit("heartbeat", { active: state.active });
			state.active = false;
		}, HEARTBEAT_MS);
		document.addEventListener("visibilitychange", () => {
			socket.emit("visibility", { state: document.visibilityState === "hidden" ? "hidden" : "visible" });
		});
		// Closing the tab: the socket closes too, but a beacon is delivered even when the page is gone.
		addEventListener("pagehide", () => {
			navigator.sendBeacon("/api/presence/beacon", new Blob([JSON.stringify({ token: state.token, device_id: deviceId })], { type: "application/json" }));
		});
	}

	// ---- node registry: status of every node, as GET /api/v1/nodes serves it --------------------
	// Status is derived from heartbeat age when read (a node that stops heartbeating ages into degraded
	// and offline without any event), so the page polls; a registry event pushed by the gateway (a node
	// joined, left, registered, changed status) refreshes at once instead of waiting for the next poll.
	const NODES_POLL_MS = Math.min(60000, Math.max(500, Number(params.get("nodes")) || 5000));
	let nodesRefresh = null;

	function ago(iso) {
		const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
		return seconds < 90 ? `${seconds} s ago` : seconds < 5400 ? `${Math.round(seconds / 60)} min ago` : `${Math.round(seconds / 3600)} h ago`;
	}

	async function loadNodes() {
		const { nodes } = await api("GET", "/api/v1/nodes?limit=200");
		const list = $("nodes");
		list.innerHTML = "";
		for (const node of nodes) {
			const li = document.createElement("li");
			li.dataset.node = node.node_id;
			li.dataset.status = node.status;
			li.dataset.role = node.role;
			const dot = document.createElement("span");
			dot.className = `dot ${node.status}`;
			dot.title = node.status;
			const name = document.createElement("span");
			name.className = "node-name";
			name.textContent = node.name || node.node_id;
			const meta = document.createElement("span");
			meta.className = "node-meta";
			meta.textContent = `${node.role} · ${node.status} · ${ago(node.last_heartbeat)}`;
			meta.title = `last heartbeat ${node.last_heartbeat}`;
			li.append(dot, name, meta);
			list.appendChild(li);
		}
	}

	function refreshNodesSoon() {
		if (nodesRefresh) return;
		nodesRefresh = setTimeout(() => {
			nodesRefresh = null;
			loadNodes().catch(() => undefined);
		}, 200);
	}

	function startNodes() {
		// The registry may live on no node of this mesh (404/503): the section then stays empty, quietly.
		const poll = () => loadNodes().catch(() => undefined);
		poll();
		setInterval(poll, NODES_POLL_MS);
	}

	// ---- start ---------------------------------------------------------------------------------
	async function start() {
		$("login").hidden = true;
		$("me").hidden = false;
		$("me").textContent = state.user;
		$("app").hidden = false;
		startPresence();
		startNodes();
		await loadRooms();
		const wanted = params.get("room");
		if (wanted) await openRoom(wanted);
	}

	$("login").addEventListener("submit", async event => {
		event.preventDefault();
		const user = $("login-user").value.trim();
		if (!/^[A-Za-z0-9_.-]{1,40}$/.test(user)) return showError("name: 1-40 letters, digits, . _ -");
		const res = await fetch(`/auth/dev-token?user=${encodeURIComponent(user)}`);
		const data = await res.json();
		if (!res.ok) return showError(data.message);
		state.token = data.token;
		state.user = user;
		sessionStorage.setItem("token", data.token);
		sessionStorage.setItem("user", user);
		start().catch(e => showError(e.message));
	});

	fetch("/health").then(r => r.json()).then(h => ($("node").textContent = `served by ${h.node && h.node.id ? h.node.id : location.host}`)).catch(() => undefined);
	if (state.token) start().catch(e => showError(e.message));
})();
