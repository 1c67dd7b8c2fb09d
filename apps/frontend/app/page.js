"use client";

import { useCallback, useEffect, useState } from "react";

// All calls go to this app's own /api routes, which proxy to the backend server-side.
async function api(path, init = {}) {
  const res = await fetch(path, {
    ...init,
    headers: init.body ? { "Content-Type": "application/json" } : undefined,
    cache: "no-store",
  });
  if (res.status === 204) return null;
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(describe(data, res.status));
  return data;
}

function describe(data, status) {
  const detail = data?.detail;
  if (Array.isArray(detail)) return detail.map((d) => d.msg).join("; ");
  return detail || data?.error || `request failed (${status})`;
}

function Tasks({ tasks, error, onAdd, onToggle, onDelete }) {
  const [title, setTitle] = useState("");
  const [busy, setBusy] = useState(false);

  async function submit(e) {
    e.preventDefault();
    if (!title.trim()) return;
    setBusy(true);
    if (await onAdd(title.trim())) setTitle("");
    setBusy(false);
  }

  return (
    <section aria-label="Tasks">
      <h1>Tasks</h1>
      <form onSubmit={submit}>
        <input type="text" data-testid="new-task" placeholder="What needs doing?" maxLength={200}
               value={title} onChange={(e) => setTitle(e.target.value)} aria-label="New task title" />
        <button type="submit" data-testid="add-task" disabled={busy || !title.trim()}>Add</button>
      </form>
      {error && <p className="error" role="alert">{error}</p>}
      {tasks === null ? <p className="muted">Loading…</p> : tasks.length === 0 ? <p className="muted">No tasks yet.</p> : null}
      <ul data-testid="task-list">
        {(tasks ?? []).map((t) => (
          <li key={t.id} className={`task${t.completed ? " done" : ""}`} data-testid="task">
            <input type="checkbox" checked={t.completed} onChange={() => onToggle(t)} aria-label={`Complete ${t.title}`} />
            <span>{t.title}</span>
            <button className="link" onClick={() => onDelete(t)} aria-label={`Delete ${t.title}`}>Delete</button>
          </li>
        ))}
      </ul>
    </section>
  );
}

function Chat({ onToolCalls }) {
  const [messages, setMessages] = useState([
    { role: "assistant", content: 'Hi! Try "add buy milk" or "list my pending tasks".' },
  ]);
  const [text, setText] = useState("");
  const [conversationId, setConversationId] = useState(null);
  const [busy, setBusy] = useState(false);

  async function send(e) {
    e.preventDefault();
    const message = text.trim();
    if (!message) return;
    setText("");
    setBusy(true);
    setMessages((m) => [...m, { role: "user", content: message }]);
    try {
      const body = conversationId ? { message, conversation_id: conversationId } : { message };
      const r = await api("/api/chat", { method: "POST", body: JSON.stringify(body) });
      setConversationId(r.conversation_id);
      setMessages((m) => [...m, { role: "assistant", content: r.response }]);
      if (r.tool_calls?.length) onToolCalls();
    } catch (err) {
      setMessages((m) => [...m, { role: "assistant", content: `Error: ${err.message}` }]);
    } finally {
      setBusy(false);
    }
  }

  return (
    <section aria-label="Chat">
      <h1>Assistant</h1>
      <div className="log" data-testid="chat-log">
        {messages.map((m, i) => <div key={i} className={`msg ${m.role}`}>{m.content}</div>)}
      </div>
      <form onSubmit={send}>
        <input type="text" data-testid="chat-input" placeholder="Ask me to manage your tasks" maxLength={4000}
               value={text} onChange={(e) => setText(e.target.value)} aria-label="Chat message" />
        <button type="submit" data-testid="chat-send" disabled={busy || !text.trim()}>Send</button>
      </form>
    </section>
  );
}

export default function Home() {
  const [tasks, setTasks] = useState(null);
  const [error, setError] = useState("");

  const refresh = useCallback(async () => {
    try {
      setTasks(await api("/api/tasks"));
      setError("");
    } catch (err) {
      setError(err.message);
      setTasks((t) => t ?? []);
    }
  }, []);

  useEffect(() => { refresh(); }, [refresh]);

  // Each mutation reports its error and re-reads the list, so the UI shows server truth.
  const act = async (fn) => {
    try {
      await fn();
      setError("");
      return true;
    } catch (err) {
      setError(err.message);
      return false;
    } finally {
      await refresh();
    }
  };

  return (
    <main>
      <Tasks
        tasks={tasks}
        error={error}
        onAdd={(title) => act(() => api("/api/tasks", { method: "POST", body: JSON.stringify({ title }) }))}
        onToggle={(t) => act(() => t.completed
          ? api(`/api/tasks/${t.id}`, { method: "PUT", body: JSON.stringify({ completed: false }) })
          : api(`/api/tasks/${t.id}/complete`, { method: "PATCH" }))}
        onDelete={(t) => act(() => api(`/api/tasks/${t.id}`, { method: "DELETE" }))}
      />
      <Chat onToolCalls={refresh} />
    </main>
  );
}
