"""Node hosting: the Celery worker that owns a pool's adapter runtimes on this host."""
