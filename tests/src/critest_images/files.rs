//! The text files the images carry: accounts, nsswitch, the web
//! servers' configs and Apache's start script.

/// Upstream busybox's accounts: `nobody` for RunAsUserName, `www-data`
/// for the username images and the web servers' workers.
pub(super) const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
";

pub(super) const GROUP: &str = "\
root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
wheel:x:10:root
www-data:x:33:
staff:x:50:
users:x:100:
nogroup:x:65534:
";

/// glibc without an nsswitch.conf would try NIS-style `compat` lookups.
pub(super) const NSSWITCH: &str = "\
passwd: files
group: files
shadow: files
hosts: files dns
networks: files
protocols: files
services: files
";

/// The predefined-group image's user: uid 1000, a member of gid 50000
/// through /etc/group only (the SupplementalGroupsPolicy specs).
pub(super) const DEFAULT_USER: &str =
    "default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n";
pub(super) const DEFAULT_USER_GROUPS: &str =
    "default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n";

/// nginx in the foreground (the image's command adds `daemon off;`) with
/// its pid where the HostPID spec reads it and its logs on the
/// container's stdout and stderr (the log paths are links to them).
pub(super) const NGINX_CONF: &str = "\
user www-data;
worker_processes 1;
pid /var/run/nginx.pid;
error_log /var/log/nginx/error.log notice;

events {
    worker_connections 256;
}

http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log /var/log/nginx/access.log;
    sendfile on;
    keepalive_timeout 65;
    include /etc/nginx/conf.d/*.conf;
}
";

pub(super) fn nginx_site(listen: &str) -> String {
    format!(
        "server {{\n    listen {listen};\n    server_name localhost;\n\n    location / {{\n        \
         root /usr/share/nginx/html;\n        index index.html;\n    }}\n}}\n"
    )
}

/// Apache laid out as the upstream httpd image (`/usr/local/apache2`),
/// with only the modules serving a static page needs.
pub(super) const HTTPD_CONF: &str = "\
ServerRoot /usr/local/apache2
Listen 80
LoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so
LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so
LoadModule dir_module /usr/lib/apache2/modules/mod_dir.so
LoadModule mime_module /usr/lib/apache2/modules/mod_mime.so
User www-data
Group www-data
DefaultRuntimeDir logs
PidFile logs/httpd.pid
ErrorLog /proc/self/fd/2
LogLevel warn
LogFormat \"%h %l %u %t \\\"%r\\\" %>s %b\" common
CustomLog /proc/self/fd/1 common
TypesConfig /dev/null
AddType text/html .html
DocumentRoot /usr/local/apache2/htdocs
DirectoryIndex index.html
<Directory />
    Require all denied
</Directory>
<Directory /usr/local/apache2/htdocs>
    Require all granted
</Directory>
";

pub(super) const HTTPD_MODULES: &[&str] =
    &["mod_mpm_event", "mod_authz_core", "mod_dir", "mod_mime"];

/// The upstream image's command: it starts Apache as `httpd`, which is the
/// name it logs under (the multi-container spec looks for `httpd` in the
/// container's log).
pub(super) const HTTPD_FOREGROUND: &str = "\
#!/bin/sh
# Apache in the foreground as the container's main process. A pid file
# left by an earlier run of the same container would stop it starting.
set -e
rm -f /usr/local/apache2/logs/httpd.pid
exec httpd -DFOREGROUND \"$@\"
";
