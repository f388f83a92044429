#!/bin/sh
# The Soft-RoCE guest's half of tests/faults/rdma_fault_matrix.py (its /test/run.sh): once rxe0 is
# active, a command server on :7100 (reached from the host through a forwarded port) runs each
# connection as `sh` reading the host's script from the connection and answering on it. The host
# ends the session by writing its verdict to /tmp/verdict and killing the server; that verdict is
# this script's status (RXE-EXIT). The host's deadline (RXE_TIMEOUT) bounds the whole session.
ulimit -l unlimited
for _ in $(seq 100); do
  ibv_devinfo -d rxe0 2>/dev/null | grep -q 'state:.*PORT_ACTIVE' && break
  sleep 0.1
done
ibv_devinfo -d rxe0 | grep -q 'state:.*PORT_ACTIVE' || { echo "rxe0 has no ACTIVE port"; exit 100; }
nc -ll -p 7100 -e /bin/sh &
server=$!
for _ in $(seq 100); do netstat -ltn | grep -q ':7100 ' && break; sleep 0.05; done
echo "RDMIG-GUEST-SERVING"
wait "$server"
exit "$(cat /tmp/verdict 2>/dev/null || echo 1)"
