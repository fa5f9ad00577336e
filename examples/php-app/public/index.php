<?php
// The front controller: every request that is no file comes here (`passthru: /index.php`).
// It counts a visit in MariaDB and says what PHP-FPM gave it.

require __DIR__ . '/../vendor/autoload.php';

$pdo = App\Database::connect();
$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
$pdo->prepare('INSERT INTO visits (path) VALUES (?)')->execute([$path]);

header('Content-Type: application/json');
header('Cache-Control: no-store');
if ($path === '/missing') {
    http_response_code(404);
}
echo json_encode([
    'visits' => (int) $pdo->query('SELECT COUNT(*) FROM visits')->fetchColumn(),
    'migrations' => (int) $pdo->query('SELECT COUNT(*) FROM migrations')->fetchColumn(),
    'request_uri' => $_SERVER['REQUEST_URI'],
    'script_name' => $_SERVER['SCRIPT_NAME'],
    'method' => $_SERVER['REQUEST_METHOD'],
    'body' => file_get_contents('php://input'),
    'http_proxy' => getenv('HTTP_PROXY') ?: ($_SERVER['HTTP_PROXY'] ?? null),
    'memory_limit' => ini_get('memory_limit'),
    'redis' => extension_loaded('redis'),
    'environment' => getenv('PLATFORM_ENVIRONMENT'),
]), "\n";
