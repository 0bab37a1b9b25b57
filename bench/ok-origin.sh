# Sourced by bench/profile.sh and bench/ab.sh: an nginx origin that answers
# every request with "ok" over kept-alive connections, GET /16k with 16 KiB
# (the file DIR/www/16k, made here), GET /16k-chunked with the same 16 KiB
# as one chunk of a chunked body (the addition filter, adding an empty
# answer after it, drops the length, as an application's streamed answer
# has none; Debian's nginx has the module), and POST /upload once it has
# read the whole body (as the harness's origin does).
#
#   ok_origin_conf DIR PORT > DIR/origin.conf   # then: nginx -c DIR/origin.conf
ok_origin_conf() {
  local dir=$1 port=$2
  mkdir -p "$dir/www"
  chmod 755 "$dir" # nginx's workers run unprivileged
  head -c 16384 /dev/zero | tr '\0' x >"$dir/www/16k"
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
  upstream self { server 127.0.0.1:$port; keepalive 4; }
  server {
    listen 127.0.0.1:$port;
    location / { return 200 "ok\n"; }
    location = /16k { root $dir/www; try_files /16k =404; }
    location = /16k-chunked {
      root $dir/www; try_files /16k =404;
      addition_types *; add_after_body /empty;
    }
    location = /empty { return 200 ""; }
    location = /upload {
      client_max_body_size 4m; client_body_buffer_size 2m;
      proxy_pass_request_body off; proxy_set_header Content-Length "";
      proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_pass http://self/stored;
    }
    location = /stored { return 200 "stored\n"; }
  }
}
CONF
}
