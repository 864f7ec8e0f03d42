#!/usr/bin/env bash
# Peak memory of `tally export` and `tally archive` against the number of customers
# (issue 22 #9): the same number of rows spread over few customers and over one
# customer per row, in the same run, each beside psql's COPY of the same rows.
#
#   cargo build --release -p tally-cli --bin tally
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres bash benches/cardinality.sh [ROWS]
#
# ROWS defaults to 500 000. For each spread (10 customers; ROWS customers) it makes a
# database, imports ROWS api events of one past month (a CSV made here), then measures
# with /usr/bin/time -v: psql COPY of the rows to CSV (the baseline), tally export as
# CSV and as JSON, and tally archive of everything. Prints one line per measurement and
# drops what it created.
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-500000}
bin=target/release
work=$(mktemp -d)
base=${DATABASE_URL:?set DATABASE_URL to a server where databases may be created}
trap 'rm -rf "$work"' EXIT

# shellcheck source=measure.sh
source benches/measure.sh

for customers in 10 "$rows"; do
  db="tally_card_$$_$customers"
  psql -q "$base" -c "CREATE DATABASE $db"
  url=$(python3 -c 'import sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); print(p._replace(path="/"+sys.argv[2]).geturl())' "$base" "$db")
  python3 - "$rows" "$customers" >"$work/events.csv" <<'PY'
import sys, uuid
rows, customers = int(sys.argv[1]), int(sys.argv[2])
print("event_id,customer_id,service,quantity,recorded_at")
for i in range(rows):
    c = i % customers
    minute = i % (28 * 24 * 60)
    day, rest = divmod(minute, 24 * 60)
    h, m = divmod(rest, 60)
    print(f"{uuid.UUID(int=i + 1)},cust-{c:07d},api,{1 + i % 7}.25,2025-02-{day + 1:02d}T{h:02d}:{m:02d}:00Z")
PY
  DATABASE_URL=$url "$bin/tally" migrate >/dev/null
  DATABASE_URL=$url "$bin/tally" import --input csv "$work/events.csv" >/dev/null
  echo "customers=$customers rows=$(psql -At "$url" -c 'SELECT count(*) FROM usage_events')"
  measure "customers=$customers psql_copy_csv" bash -c \
    "psql -At '$url' -c 'COPY (SELECT recorded_at, customer_id, service, quantity, metadata, event_id FROM usage_events) TO STDOUT (FORMAT csv, HEADER)' > '$work/psql.csv'"
  for f in csv json; do
    measure "customers=$customers tally_export_$f" env DATABASE_URL="$url" "$bin/tally" export \
      --format "$f" --from 2025-01-01 --to 2025-04-01 --output "$work/out.$f" --force
  done
  measure "customers=$customers tally_archive" env DATABASE_URL="$url" "$bin/tally" archive \
    --older-than 0 --dir "$work/archive-$customers"
  DATABASE_URL=$url "$bin/tally" verify --format json | tr -d '\n '; echo
  psql -q "$base" -c "DROP DATABASE $db"
done
