#!/usr/bin/env bash
# Times `tally export` (CSV, JSON, XLSX) and `tally archive` on one database against
# psql's `COPY … TO STDOUT (FORMAT csv)` of the same rows, in the same run (issue 10).
#
#   cargo build --release -p tally-cli -p tally-benches --bin tally --bin tally-load
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres bash benches/export-timing.sh [EVENTS] [ROUNDS]
#
# It fills a database with tally-load (EVENTS, default 1 000 000, backfill shape: the 30 days
# to the end of the month before last),
# then runs each export ROUNDS times (default 2), alternating with the psql baseline, and
# finally archives a copy of the database. Wall time and peak RSS come from
# /usr/bin/time -v. Prints one line per measurement and drops what it created.
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-1000000}
rounds=${2:-2}
bin=target/release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The 30 days end at 23:00 on the last day of the month before last, so the archive
# below takes one whole past month (plus the late events' tail of the month before).
end=$(python3 -c 'import datetime as d; t=d.date.today().replace(day=1); m=(t-d.timedelta(days=1)).replace(day=1); print((m-d.timedelta(days=1)).isoformat()+"T23:00:00Z")')
url=$("$bin/tally-load" --events "$events" --shape backfill --batch-size 100000 --keep --end "$end" 2>/dev/null |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["kept_database_url"])')
db=$(sed -E 's/.*dbname=([^ ]+).*/\1/' <<<"$url")
for t in usage_hourly usage_daily usage_hourly_total; do psql -q "$url" -c "VACUUM ANALYZE $t"; done
rows=$(psql -At "$url" -c "SELECT count(*) FROM usage_events")
echo "database $db: $rows rows"

# shellcheck source=measure.sh
source benches/measure.sh

copy_sql="COPY (SELECT recorded_at, customer_id, service, quantity, metadata, event_id FROM usage_events) TO STDOUT (FORMAT csv, HEADER)"
for r in $(seq 1 "$rounds"); do
  measure "round$r psql_copy_csv" bash -c "psql -At '$url' -c \"$copy_sql\" > '$work/psql.csv'"
  for f in csv json xlsx; do
    measure "round$r tally_export_$f" env DATABASE_URL="$url" "$bin/tally" export --format "$f" \
      --from 1900-01-01 --to 2199-12-31 --output "$work/out.$f" --force
  done
done
echo "csv lines: psql $(wc -l <"$work/psql.csv"), tally $(wc -l <"$work/out.csv")"

# Archive everything (--older-than 0) on a copy, so the export database stays whole.
psql -q "${url/dbname=$db/dbname=postgres}" -c "CREATE DATABASE ${db}_arch TEMPLATE $db"
measure "archive_all" env DATABASE_URL="${url/dbname=$db/dbname=${db}_arch}" "$bin/tally" archive \
  --older-than 0 --dir "$work/archive"
env DATABASE_URL="${url/dbname=$db/dbname=${db}_arch}" "$bin/tally" verify --format json | tr -d '\n '; echo
psql -q "${url/dbname=$db/dbname=postgres}" -c "DROP DATABASE ${db}_arch" -c "DROP DATABASE $db"
