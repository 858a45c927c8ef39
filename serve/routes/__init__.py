"""The HTTP routes by role, each module an `APIRouter`: health (/livez, /readyz, /metrics), v1 (the
scoring API) and admin (/admin/reload, included only when SERVE_ADMIN_TOKEN is set)."""
