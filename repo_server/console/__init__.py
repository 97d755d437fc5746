"""The operator's console: server-rendered pages under /ui over the same services, tokens
and roles as the API (docs/console.md)."""
