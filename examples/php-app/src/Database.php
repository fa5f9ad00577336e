<?php
// The app's MariaDB, found through PLATFORM_RELATIONSHIPS as on Platform.sh.

namespace App;

final class Database
{
    public static function connect(): \PDO
    {
        $relationships = json_decode(base64_decode(getenv('PLATFORM_RELATIONSHIPS')), true);
        $db = $relationships['database'][0];
        return new \PDO(
            sprintf('mysql:host=%s;port=%d;dbname=%s', $db['host'], $db['port'], $db['path']),
            $db['username'],
            $db['password'],
            [\PDO::ATTR_ERRMODE => \PDO::ERRMODE_EXCEPTION]
        );
    }
}
