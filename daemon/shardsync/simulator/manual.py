"""The admin API as ``shardsync simulate --help`` shows it (after the option flags)."""

ADMIN_API = """\
admin API (same port as REST and WebSocket; https when --tls-cert/--tls-key are given):
  GET  /admin/stats       counters and records: connections per remainder, logins, renewals,
                          authorize_attempts, syncrequests, heartbeats, closes, handshakes,
                          refused_upgrades, socket_penalties, poisoned, and subscriptions:
                          one record per synced socket ever {conn, divisor, remainder, expression,
                          synced_at, snapshot_sent_at, closed_at} (epoch seconds, closed_at null while live)
  GET  /admin/truth?divisor=&remainder=&expression=&entity_types=a,b
                          the truth of one shard (poison entities are not part of it)
  GET  /admin/history     per key that ever existed, the intervals [created_at, deleted_at|null]
  GET  /admin/history?entity_type=order&id=N     the same for one key
  POST /admin/<knob>      a JSON object of keyword arguments; remainder/divisor pick one shard:
    drop, reset           cut sockets: FIN, or RST (SO_LINGER 0)
    close                 c[code,"reason"] then close      shutdown   shutdown event (reason_code) then close
    stall, unstall        silence sockets (seconds)        refuse     {"seconds": S}: upgrades get HTTP 503
    revoke                {"token": T} or all tokens       ws429      {"count": N} syncrequests get s:429
    penalty, lockout      p-ticket/p-captcha or 423/429 on the next logins
    socket_penalty        {"endpoint": "authorize"|"syncrequest", "mode": "ticket"|"captcha",
                          "count": N, "p_time": S}: the next N requests get {"p-ticket", "p-time"};
                          resend with the ticket after p-time (authorize: query p-ticket=T or body
                          {"token": ..., "p-ticket": T}; syncrequest: "p-ticket" in the body)
    poison                {"kind": "deep"|"bigid"|"badtype", "remainder", "divisor", "in_snapshot"}
                          one order a correct client quarantines; cure removes them from snapshots
    blank_snapshot        {"count": N, "remainder", "divisor"}: the next N snapshots of that shard are empty
    purge                 {"entity_types": [...], "remainder", "divisor"}: delete all of those in the shard
    touch_users           {"count": N}: N user updates, which reach every shard
    grow                  {"orders": N, "text_bytes": B, "remainder", "divisor"}: N working orders
                          (4 entities each) at once, sent to nobody live (big snapshots)
    churn                 {"updates": U, "deletions": D, "creations": C, "remainder", "divisor"}:
                          U orders flip status, D command reports go, C orders come; published
    pause, resume, step, mutate, inflate, malformed, replay, event, configure
"""
