<?php
// The app's configuration: the cached copy the deploy hook wrote, else read afresh.

$cached = __DIR__ . '/cache/config.php';
if (is_file($cached)) {
    return ['cached' => true] + require $cached;
}
return ['cached' => false] + require __DIR__ . '/../config/app.php';
