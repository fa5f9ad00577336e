<?php
// The console commands the hooks and workers run.

namespace App\Console;

use App\Platform;

final class Kernel
{
    public function __construct(private string $base)
    {
    }

    public function run(array $arguments): int
    {
        $command = $arguments[0] ?? '';
        $options = array_slice($arguments, 1);
        switch ($command) {
            case 'optimize:clear':
                return $this->clearCaches();
            case 'optimize':
                return $this->cacheConfig();
            case 'view:cache':
                return $this->compileViews();
            case 'migrate':
                return $this->migrate($options);
            case 'queue:work':
                return $this->work($options);
            case 'schedule:work':
                return $this->schedule();
            default:
                fwrite(STDERR, "Command \"$command\" is not defined.\n");
                return 1;
        }
    }

    private function clearCaches(): int
    {
        $cleared = 0;
        foreach (['bootstrap/cache', 'storage/framework/views'] as $folder) {
            foreach (glob("$this->base/$folder/*.php") ?: [] as $file) {
                unlink($file);
                $cleared++;
            }
        }
        echo "Caches cleared ($cleared files).\n";
        return 0;
    }

    private function cacheConfig(): int
    {
        $config = require "$this->base/config/app.php";
        Platform::writeFile(
            "$this->base/bootstrap/cache/config.php",
            "<?php\nreturn " . var_export($config, true) . ";\n"
        );
        echo "Configuration cached.\n";
        return 0;
    }

    /** Compiles resources/views/NAME.tpl: `{{ $name }}` prints an escaped variable. */
    private function compileViews(): int
    {
        foreach (glob("$this->base/resources/views/*.tpl") ?: [] as $view) {
            $source = file_get_contents($view);
            $compiled = preg_replace(
                '/\{\{\s*\$(\w+)\s*\}\}/',
                '<?= htmlspecialchars((string) $$1) ?>',
                $source
            );
            $name = basename($view, '.tpl');
            Platform::writeFile("$this->base/storage/framework/views/$name.php", $compiled);
            echo "Compiled view $name.\n";
        }
        return 0;
    }

    private function migrate(array $options): int
    {
        $production = getenv('PLATFORM_ENVIRONMENT_TYPE') === 'production';
        if ($production && !in_array('--force', $options, true)) {
            fwrite(STDERR, "In production, migrate needs --force.\n");
            return 1;
        }
        $db = Platform::database();
        $db->exec('CREATE TABLE IF NOT EXISTS migrations (id INT AUTO_INCREMENT PRIMARY KEY, migration VARCHAR(255) NOT NULL UNIQUE, batch INT NOT NULL)');
        $done = $db->query('SELECT migration FROM migrations')->fetchAll(\PDO::FETCH_COLUMN);
        $batch = 1 + (int) $db->query('SELECT COALESCE(MAX(batch), 0) FROM migrations')->fetchColumn();
        $files = glob("$this->base/database/migrations/*.sql") ?: [];
        sort($files);
        $ran = 0;
        foreach ($files as $file) {
            $name = basename($file, '.sql');
            if (in_array($name, $done, true)) {
                continue;
            }
            $db->exec(file_get_contents($file));
            $db->prepare('INSERT INTO migrations (migration, batch) VALUES (?, ?)')->execute([$name, $batch]);
            echo "Migrated: $name\n";
            $ran++;
        }
        if ($ran === 0) {
            echo "Nothing to migrate.\n";
        }
        return 0;
    }

    /** Runs queued jobs from Redis; each one is recorded in MariaDB and leaves a public file. */
    private function work(array $options): int
    {
        $maxTime = 3600;
        foreach ($options as $option) {
            if (str_starts_with($option, '--max-time=')) {
                $maxTime = (int) substr($option, strlen('--max-time='));
            }
        }
        $until = time() + $maxTime;
        $redis = Platform::redis();
        $db = Platform::database();
        echo "Processing jobs from the [default] queue.\n";
        while (time() < $until) {
            $popped = $redis->blPop(['queues:default'], 5);
            if (!$popped) {
                continue;
            }
            $job = json_decode($popped[1], true);
            $id = (string) $job['id'];
            $db->prepare('INSERT INTO jobs_done (job, node) VALUES (?, ?)')
                ->execute([$id, (string) getenv('LOCKSTEP_NODE')]);
            Platform::writeFile(
                "$this->base/storage/app/public/jobs/$id.txt",
                "job $id done by the queue worker\n"
            );
            echo "Processed job $id\n";
        }
        return 0;
    }

    private function schedule(): int
    {
        $redis = Platform::redis();
        while (true) {
            $redis->set('schedule:last-run', (string) time());
            echo "Ran the scheduled tasks.\n";
            sleep(10);
        }
    }
}
