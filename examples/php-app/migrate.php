<?php
// The deploy hook: makes the schema, and records that it ran (once per deployment).

require __DIR__ . '/vendor/autoload.php';

$pdo = App\Database::connect();
$pdo->exec('CREATE TABLE IF NOT EXISTS visits (id INT AUTO_INCREMENT PRIMARY KEY, path VARCHAR(255) NOT NULL)');
$pdo->exec('CREATE TABLE IF NOT EXISTS migrations (id INT AUTO_INCREMENT PRIMARY KEY, tree VARCHAR(64) NOT NULL)');
$pdo->prepare('INSERT INTO migrations (tree) VALUES (?)')->execute([getenv('PLATFORM_TREE_ID')]);
echo "migrated\n";
