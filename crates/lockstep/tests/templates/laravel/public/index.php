<?php
// The front controller: every request that is no file comes here (`passthru: /index.php`).
//   GET  /      what the deploy hook and the workers did, as JSON
//   POST /jobs  queues a job for the queue worker

require __DIR__ . '/../vendor/autoload.php';

use App\Platform;

$config = require __DIR__ . '/../bootstrap/app.php';
$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);

header('Content-Type: application/json');
header('Cache-Control: no-store');

try {
    if ($path === '/jobs' && $_SERVER['REQUEST_METHOD'] === 'POST') {
        $id = bin2hex(random_bytes(6));
        Platform::redis()->rPush('queues:default', json_encode(['id' => $id]));
        echo json_encode(['queued' => $id]), "\n";
        return;
    }
    if ($path !== '/') {
        http_response_code(404);
        echo json_encode(['error' => 'not found']), "\n";
        return;
    }

    // Sessions live in Redis, through their own relationship.
    $session = Platform::relationship('redissession');
    ini_set('session.save_handler', 'redis');
    ini_set('session.save_path', sprintf('tcp://%s:%d', $session['host'], $session['port']));
    session_start();
    $_SESSION['visits'] = ($_SESSION['visits'] ?? 0) + 1;

    $db = Platform::database();
    $compiled = __DIR__ . '/../storage/framework/views/welcome.php';
    $view = null;
    if (is_file($compiled)) {
        $greeting = $config['greeting'];
        $user = $db->query('SELECT name FROM users ORDER BY id LIMIT 1')->fetchColumn();
        ob_start();
        include $compiled;
        $view = ob_get_clean();
    }
    echo json_encode([
        'app' => $config['name'],
        'config_cached' => $config['cached'],
        'view' => $view,
        'migrations' => $db->query('SELECT migration FROM migrations ORDER BY id')->fetchAll(PDO::FETCH_COLUMN),
        'jobs_done' => (int) $db->query('SELECT COUNT(*) FROM jobs_done')->fetchColumn(),
        'scheduler_last_run' => Platform::redis()->get('schedule:last-run') ?: null,
        'session_visits' => $_SESSION['visits'],
    ]), "\n";
} catch (Throwable $error) {
    http_response_code(500);
    echo json_encode(['error' => $error->getMessage()]), "\n";
}
