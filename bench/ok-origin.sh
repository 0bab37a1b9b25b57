# Sourced by bench/profile.sh and bench/ab.sh: an nginx origin that answers
# every request with "ok" over kept-alive connections.
#
#   ok_origin_conf DIR PORT > DIR/origin.conf   # then: nginx -c DIR/origin.conf
ok_origin_conf() {
  local dir=$1 port=$2
  cat <<CONF
worker_processes 1;
daemon off;
pid $dir/origin.pid;
error_log $dir/origin.err warn;
events { worker_connections 8000; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_body_temp_path $dir/b; proxy_temp_path $dir/p; fastcgi_temp_path $dir/f;
  uwsgi_temp_path $dir/u; scgi_temp_path $dir/s;
  server { listen 127.0.0.1:$port; location / { return 200 "ok\n"; } }
}
CONF
}
