"""Worker processes: ``workers = N`` runs one supervisor and N gateway workers on the one spool.

The supervisor (:mod:`gateway.workers.supervisor`) takes the spool lock, recovers
the spool, writes the TLS and DKIM files once, binds every listener (one
``SO_REUSEPORT`` socket per worker, so the kernel spreads connections and a
restarting worker's socket keeps queueing them), starts the workers and
serves ``/metrics`` (summed with prometheus-client's multiprocess mode) and
``/healthz``. Each worker (:mod:`gateway.workers.role`) is a whole
:class:`gateway.app.Gateway` on inherited sockets: it accepts SMTP sessions,
commits to the shared spool and delivers from it, claiming into its own
``active.<slot>/``.
"""
