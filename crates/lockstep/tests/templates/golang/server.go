// A Go web app in the golang template's shape, standard library only. Started plainly, it
// serves on $PORT and, on each visit to /, writes a row into MariaDB and reads it back through
// the mariadb client, with the DATABASE_* variables its start command exported.
// `app relationship NAME FIELD` prints one field of a relationship, for that start command.
package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/exec"
	"strings"
)

func relationshipField(name, field string) (string, error) {
	raw, err := base64.StdEncoding.DecodeString(os.Getenv("PLATFORM_RELATIONSHIPS"))
	if err != nil {
		return "", err
	}
	var all map[string][]map[string]interface{}
	if err := json.Unmarshal(raw, &all); err != nil {
		return "", err
	}
	endpoints := all[name]
	if len(endpoints) == 0 {
		return "", fmt.Errorf("no relationship %q", name)
	}
	value, ok := endpoints[0][field]
	if !ok {
		return "", fmt.Errorf("relationship %q has no %q", name, field)
	}
	switch v := value.(type) {
	case float64:
		return fmt.Sprintf("%d", int64(v)), nil
	default:
		return fmt.Sprint(v), nil
	}
}

func mariadb(sql string) (string, error) {
	cmd := exec.Command("mariadb", "--no-defaults",
		"-h", os.Getenv("DATABASE_HOST"), "-P", os.Getenv("DATABASE_PORT"),
		"-u", os.Getenv("DATABASE_USERNAME"), "-N", "-B", os.Getenv("DATABASE_PATH"), "-e", sql)
	cmd.Env = append(os.Environ(), "MYSQL_PWD="+os.Getenv("DATABASE_PASSWORD"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%v: %s", err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

func home(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	row, err := mariadb(`DROP TABLE IF EXISTS people;
		CREATE TABLE people (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(64), team VARCHAR(128));
		INSERT INTO people (name, team) VALUES ('gopher', 'golang corpus');
		SELECT CONCAT(id, ' ', name, ' ', team) FROM people`)
	if err != nil {
		http.Error(w, "database: "+err.Error(), http.StatusInternalServerError)
		return
	}
	fmt.Fprintf(w, "golang corpus app\nrow %s\n", row)
}

func main() {
	if len(os.Args) == 4 && os.Args[1] == "relationship" {
		value, err := relationshipField(os.Args[2], os.Args[3])
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(value)
		return
	}
	port := os.Getenv("PORT")
	if port == "" {
		port = "8000"
	}
	http.HandleFunc("/", home)
	log.Printf("listening on %s", port)
	log.Fatal(http.ListenAndServe("127.0.0.1:"+port, nil))
}
