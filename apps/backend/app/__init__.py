"""todo-chatbot backend: tasks REST API, MCP task tools and a stateless chat agent."""

__version__ = "0.1.0"
