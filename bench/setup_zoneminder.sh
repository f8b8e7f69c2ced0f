#!/bin/sh
# ZoneMinder 1.36 and MariaDB for bench/zoneminder_record.py (Debian 12, as root); idempotent.
# Installs the packages, creates the zm database from ZoneMinder's own schema with the user and
# password of /etc/zm/zm.conf (zmuser/zmpass). Containers have no systemd: MariaDB is started by
# hand when it is not running, and stopped again afterwards if this script started it.
set -eu

if [ "$(id -u)" != 0 ]; then
    echo "run as root" >&2
    exit 1
fi
if ! command -v zmc >/dev/null || ! command -v mariadbd >/dev/null; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y zoneminder mariadb-server ffmpeg
fi

started=""
if ! mariadb -e "SELECT 1" >/dev/null 2>&1; then
    mkdir -p /run/mysqld
    chown mysql /run/mysqld
    mariadbd --user=mysql --skip-networking >/tmp/setup_zoneminder-mariadb.log 2>&1 &
    started=$!
    i=0
    until mariadb -e "SELECT 1" >/dev/null 2>&1; do
        i=$((i + 1))
        if [ "$i" -gt 60 ]; then
            echo "MariaDB did not start, see /tmp/setup_zoneminder-mariadb.log" >&2
            kill "$started" 2>/dev/null || true
            exit 1
        fi
        sleep 0.5
    done
fi

# shellcheck disable=SC1091
. /etc/zm/zm.conf
mariadb -e "CREATE DATABASE IF NOT EXISTS ${ZM_DB_NAME};
CREATE USER IF NOT EXISTS '${ZM_DB_USER}'@'localhost' IDENTIFIED BY '${ZM_DB_PASS}';
GRANT ALL PRIVILEGES ON ${ZM_DB_NAME}.* TO '${ZM_DB_USER}'@'localhost'; FLUSH PRIVILEGES;"
if ! mariadb "${ZM_DB_NAME}" -e "SELECT 1 FROM Config LIMIT 1" >/dev/null 2>&1; then
    mariadb "${ZM_DB_NAME}" </usr/share/zoneminder/db/zm_create.sql
    echo "zm database created from /usr/share/zoneminder/db/zm_create.sql"
else
    echo "zm database already there"
fi

if [ -n "$started" ]; then
    kill "$started"
    wait "$started" 2>/dev/null || true
fi
echo "ZoneMinder $(zmc -v) ready: .venv/bin/python bench/zoneminder_record.py"
