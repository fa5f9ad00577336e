<?php
// What the platform tells the app in its environment.

namespace App;

final class Platform
{
    /** The first endpoint of a relationship of PLATFORM_RELATIONSHIPS. */
    public static function relationship(string $name): array
    {
        $all = json_decode(base64_decode((string) getenv('PLATFORM_RELATIONSHIPS')), true);
        if (!isset($all[$name][0])) {
            throw new \RuntimeException("no relationship $name");
        }
        return $all[$name][0];
    }

    public static function database(): \PDO
    {
        $db = self::relationship('database');
        return new \PDO(
            sprintf('mysql:host=%s;port=%d;dbname=%s', $db['host'], $db['port'], $db['path']),
            $db['username'],
            $db['password'],
            [\PDO::ATTR_ERRMODE => \PDO::ERRMODE_EXCEPTION]
        );
    }

    public static function redis(string $relationship = 'rediscache'): \Redis
    {
        $cache = self::relationship($relationship);
        $redis = new \Redis();
        $redis->connect($cache['host'], (int) $cache['port'], 5.0);
        return $redis;
    }

    /** Writes a file whole: into a temporary name beside it, then renamed. */
    public static function writeFile(string $path, string $content): void
    {
        if (!is_dir(dirname($path))) {
            mkdir(dirname($path), 0775, true);
        }
        $temporary = $path . '.' . getmypid() . '.tmp';
        file_put_contents($temporary, $content);
        rename($temporary, $path);
    }
}
